"""A model stepped on another thread than the one that loaded it: with and without releasing the
loading thread's OpenMP pool (fastdia.backends.cpu.threads).

One slot batch of one member is timed three ways in one process: on the loading thread, on a new
thread while the loading thread keeps its OpenMP pool, and on a new thread after
`release_pool()` on the loading thread (what `Engine.start` does). The server's engines step
their models on threads of their own, so the second figure is what they got before.

    python benchmarks/omp_pools.py --model dia2-tiny-random --threads 2 --out benchmarks/results/omp-pools.json
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import warnings
from pathlib import Path

import torch

import fastdia
from fastdia.backends.cpu.threads import release_pool
from fastdia.bench.runner import _machine

SCRIPT = "[S1] One member speaks now, with a few more words. [S2] And so on."


def member_batch(tts):
    """A slot batch of one seeded member, for either family."""
    g = tts._generator
    if type(tts).__name__ == "Dia2":
        from fastdia.dia2.slots import Dia2SlotBatch

        batch = Dia2SlotBatch(g, 1, 401)
        batch.join(tts.generation_config(seed=1, max_steps=400), None, entries=tts._entries(SCRIPT))
    else:
        from fastdia.dia1.options import GenerationConfig
        from fastdia.dia1.slots import SlotBatch
        from fastdia.text import tokenize

        batch = SlotBatch(g, 1, 400)
        batch.join(tokenize(SCRIPT), None, GenerationConfig(max_tokens=400, seed=1))
    return batch


def step_ms(tts, steps: int) -> float:
    batch = member_batch(tts)
    with torch.inference_mode():
        for _ in range(20):  # past Dia2's first steps, which run the decoder only
            batch.step()
        t0 = time.perf_counter()
        for _ in range(steps):
            batch.step()
        return 1e3 * (time.perf_counter() - t0) / steps


def on_new_thread(fn) -> float:
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="dia2-tiny-random")
    ap.add_argument("--quantize", choices=["int8", "int4"], default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tts = fastdia.load(args.model, **({"quantize": args.quantize} if args.quantize else {}))
    rows = {"loading thread": step_ms(tts, args.steps)}
    rows["new thread, loading thread keeps its pool"] = on_new_thread(lambda: step_ms(tts, args.steps))
    released = release_pool()
    rows["new thread, loading thread's pool released"] = on_new_thread(lambda: step_ms(tts, args.steps))
    for name, ms in rows.items():
        print(f"{args.model}: {name}: {ms:.2f} ms per step", flush=True)
    result = {"machine": _machine(), "torch": torch.__version__, "threads": args.threads, "model": args.model,
              "quantize": args.quantize, "released": released, "step_ms": rows}
    print(f"CPU: {result['machine']['cpu']}; {args.threads} threads")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
