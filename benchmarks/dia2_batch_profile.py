"""Where a Dia2 batch pass goes (decoder, depformer stages, sampling) at several batch sizes.

    python benchmarks/dia2_batch_profile.py [--model M] [--quantize int8|int4|none] [--batches 1,4]

(a `fastdia convert --quantize int8` folder loads in seconds; give it with --quantize none).
The generator's step functions are wrapped with timers; the decoder-only first steps are run
untimed, then `--steps` full passes are timed.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from fastdia.bench_dia2 import DEFAULT_TEXT_DIA2, load_tts
from fastdia.generation.dia2 import Dia2GenerationConfig
from fastdia.generation.dia2_slots import Dia2SlotBatch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dia2-2b-random")
    ap.add_argument("--quantize", default="int8")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    quantize = None if args.quantize == "none" else args.quantize
    tts, _ = load_tts({"model": args.model, "device": "cpu", "dtype": "auto", "quantize": quantize})
    g = tts._generator
    spent = {"decoder": 0.0, "stages": 0.0, "sampling": 0.0, "head": 0.0}

    def timed(part, fn):
        def call(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            spent[part] += time.perf_counter() - t0
            return out
        return call

    g.transformer, g.stage = timed("decoder", g.transformer), timed("stages", g.stage)
    g.pick, g.head = timed("sampling", g.pick), timed("head", g.head)
    entries = tts._entries(DEFAULT_TEXT_DIA2)
    warm = max(g.dep_from, 0) + 1
    for batch in (int(b) for b in args.batches.split(",")):
        slots = Dia2SlotBatch(g, batch, 2 * (warm + args.steps + 4) + 2 * g.max_delay + 4)
        for i in range(batch):
            slots.join(Dia2GenerationConfig(seed=i, max_steps=warm + args.steps + 2), None, entries=entries)
        with torch.inference_mode():
            for _ in range(warm):
                slots.step()
            spent.update(dict.fromkeys(spent, 0.0))
            t0 = time.perf_counter()
            for _ in range(args.steps):
                slots.step()
            total = time.perf_counter() - t0
        parts = ", ".join(f"{k} {v / args.steps * 1e3:.1f}" for k, v in spent.items())
        print(f"batch {batch}: pass {total / args.steps * 1e3:.1f} ms ({parts} ms)", flush=True)


if __name__ == "__main__":
    main()
