"""Per-step cost outside the model: a batched step's time minus its model calls, at 1, 16 and 64 members.

For each family, one slot batch per member count runs `--steps` timed steps after a warm-up, all
members seeded and sampled with default settings. The model calls (Dia-1: the decoder step;
Dia2: the decoder step, the depformer stages and the C frame of stages 1.. with its draws) are
timed by wrapping them; "outside" is everything else a step does: gathering inputs, sampling,
the EOS countdown, the text state machines (Dia2), writes. Dia2's C frame includes its draws, so
Dia2's "model" holds the picks of codebooks 2.. on a CPU with fastdia's kernels.

    python benchmarks/step_overhead.py --out benchmarks/results/step-overhead.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

import fastdia
from fastdia.bench.runner import _machine


class Timed:
    """A callable that adds its wall time to `total`."""

    def __init__(self, fn, total: list) -> None:
        self.fn, self.total = fn, total

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.total[0] += time.perf_counter() - t0
        return out


def dia1(tts, n: int, steps: int) -> dict:
    from fastdia.dia1.options import GenerationConfig
    from fastdia.dia1.slots import SlotBatch
    from fastdia.text import tokenize

    g = tts._generator
    batch = SlotBatch(g, n, 1000)
    for i in range(n):
        batch.join(tokenize(f"[S1] Member {i} speaks now. [S2] And so on."), None, GenerationConfig(max_tokens=1000,
                                                                                                    seed=i))
    total = [0.0]
    plain = g.decode
    g.decode = Timed(plain, total)
    try:
        return _time(batch.step, total, steps)
    finally:
        g.decode = plain


def dia2(tts, n: int, steps: int) -> dict:
    from fastdia.dia2.slots import Dia2SlotBatch

    g = tts._generator
    batch = Dia2SlotBatch(g, n, 400)
    for i in range(n):
        batch.join(tts.generation_config(seed=i, max_steps=150),
                   None, entries=tts._entries(f"[S1] Member {i} speaks now, with a few more words. [S2] And so on."))
    for _ in range(g.dep_from + 1):  # past the decoder-only steps
        batch.step()
    total = [0.0]
    saved = (g.transformer, g.stage, g.frame)
    g.transformer = Timed(saved[0], total)
    g.stage = Timed(saved[1], total)
    g._frame_stage = g.stage if saved[2] is not None else None  # the C frame stays in use
    if saved[2] is not None:
        g.frame = Timed(saved[2], total)
    try:
        return _time(batch.step, total, steps)
    finally:
        g.transformer, g.stage, g.frame = saved
        g._frame_stage = saved[1] if saved[2] is not None else None


def _time(step, total: list, steps: int) -> dict:
    with torch.inference_mode():
        for _ in range(5):
            step()
        total[0] = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - t0
    model = total[0]
    return {"step_ms": 1e3 * wall / steps, "model_ms": 1e3 * model / steps, "outside_ms": 1e3 * (wall - model) / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", default="1,16,64")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {"dia1": fastdia.load("tiny-random"), "dia2": fastdia.load("dia2-tiny-random")}
    for family, tts in models.items():
        for n in [int(x) for x in args.members.split(",")]:
            r = (dia1 if family == "dia1" else dia2)(tts, n, args.steps)
            r.update(family=family, members=n, per_member_outside_us=1e3 * r["outside_ms"] / n)
            rows.append(r)
            print(f"{family} {n:3d} members: step {r['step_ms']:.2f} ms = model {r['model_ms']:.2f} + outside "
                  f"{r['outside_ms']:.2f} ms ({r['per_member_outside_us']:.0f} us per member)", flush=True)
    result = {"machine": _machine(), "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}
    print(f"CPU: {result['machine']['cpu']}; {result['threads']} thread(s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
