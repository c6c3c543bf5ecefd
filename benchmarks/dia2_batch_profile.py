"""Where a Dia2 batch pass goes (decoder, depformer stages, sampling) at several batch sizes.

    python benchmarks/dia2_batch_profile.py [--model M] [--quantize int8|int4|none] [--batches 1,4]

(a `fastdia convert --quantize int8` folder loads in seconds; give it with --quantize none).
The generator's step functions are wrapped with timers; the decoder-only first steps are run
untimed, then `--steps` full passes are timed. With `--calls`, every C call of the prepared layer
plans is timed on its own as well: per matrix shape and row count, its time per pass and the
rate it ran at (G MAC/s, and GB/s of weights), then the norms, attention and activation calls,
and the part of the pass spent outside the plans (embeddings, sampling, Python).

The depformer runs stage by stage here (`stage`, then `pick`, each timed), not in the one C call
a real pass makes (`FusedDia2.frame`), so passes are slower than in `fastdia bench`;
`benchmarks/dia2_ab.py --switch frame` measures that difference.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from fastdia.backends.cpu import layer_plan
from fastdia.bench.dia2 import DEFAULT_TEXT_DIA2, load_tts
from fastdia.dia2.options import Dia2GenerationConfig
from fastdia.dia2.slots import Dia2SlotBatch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dia2-2b-random")
    ap.add_argument("--quantize", default="int8")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--calls", action="store_true", help="time every C call of the prepared plans")
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

    calls: dict = {}
    if args.calls:
        layer_plan.LayerPlan.run = _timed_run(calls)
    # a wrapped `stage` also turns the C frame off: every stage goes through these timers
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
            calls.clear()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                slots.step()
            total = time.perf_counter() - t0
        parts = ", ".join(f"{k} {v / args.steps * 1e3:.1f}" for k, v in spent.items())
        print(f"batch {batch}: pass {total / args.steps * 1e3:.1f} ms ({parts} ms)", flush=True)
        if args.calls:
            _print_calls(calls, args.steps, total)


def _timed_run(calls: dict):
    """LayerPlan.run with a timer around each call, summed per (function, shape) in `calls`."""
    def run(plan):
        for fn, a in plan.calls:
            t0 = time.perf_counter()
            fn(*a)
            dt = time.perf_counter() - t0
            name = fn.__name__
            if name == "fd_q8_gemv":
                key = (name, a[1], a[2], a[5])  # rows, in, out
            elif name == "fd_q4_gemv":
                key = (name, a[1], a[2], a[9])
            else:
                key = (name,)
            held = calls.setdefault(key, [0.0, 0])
            held[0] += dt
            held[1] += 1
        return plan.h if plan.logits is None else plan.logits
    return run


def _print_calls(calls: dict, steps: int, total: float) -> None:
    inside = 0.0
    for key, (t, n) in sorted(calls.items(), key=lambda kv: -kv[1][0]):
        inside += t
        line = f"  {key[0]:15s} {t / steps * 1e3:7.2f} ms/pass"
        if len(key) == 4:
            _, rows, k, n_out = key
            per = t / n
            wbytes = k * n_out * (1 if key[0] == "fd_q8_gemv" else 0.5)
            line += (f"  {rows} x {k} -> {n_out}: {n // steps} calls/pass, {per * 1e6:7.1f} us each, "
                     f"{rows * k * n_out / per / 1e9:6.1f} G MAC/s, {wbytes / per / 1e9:5.1f} GB/s of weights")
        print(line)
    print(f"  outside the plans {(total - inside) / steps * 1e3:.1f} ms/pass", flush=True)


if __name__ == "__main__":
    main()
