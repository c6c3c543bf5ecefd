"""A/B of one switch of Dia2's CPU fast path, in one process, rounds alternating (the order swapped
every round), so that this VM's bandwidth drift falls on both sides alike.

    python benchmarks/dia2_ab.py --switch frame|program [--model M] [--rounds 16] [--steps 6] [--greedy]

* `frame`: the depformer's stages 1.. with their draws in one C call (`FusedDia2.frame`), against
  the stage-by-stage loop (`stage`, then `pick`, from Python).
* `program`: each prepared plan run as one C call (`layer_plan.Program`), against the plan's
  ctypes calls made one by one from Python (with the frame off, so every stage goes through it).

A `fastdia convert --quantize int8` folder loads in seconds. Prints ms per full step on each side
per round, the per-round difference (mean, standard deviation, median), the CPU and a bandwidth
probe taken before the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from fastdia.backends.cpu import layer_plan
from fastdia.bench.common import measure_bandwidth
from fastdia.bench.runner import _machine
from fastdia.bench.dia2 import DEFAULT_TEXT_DIA2, load_tts
from fastdia.dia2.options import Dia2GenerationConfig


def _loop_run(self):
    for fn, args in self.calls:
        fn(*args)
    return self.h if self.logits is None else self.logits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--switch", choices=["frame", "program"], required=True)
    ap.add_argument("--model", default="dia2-2b-random")
    ap.add_argument("--quantize", default="none", help="none for a converted folder, else int8 or int4")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6, help="full steps timed per side and round")
    ap.add_argument("--greedy", action="store_true", help="decode at temperature 0 (greedy picks) instead of sampling")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    quantize = None if args.quantize == "none" else args.quantize
    tts, _ = load_tts({"model": args.model, "device": "cpu", "dtype": "auto", "quantize": quantize})
    g = tts._generator
    entries = tts._entries(DEFAULT_TEXT_DIA2)
    frame, program_run = g.frame, layer_plan.LayerPlan.run

    def set_side(on: bool) -> None:
        if args.switch == "frame":
            g.frame = frame if on else None
        else:
            g.frame = None
            layer_plan.LayerPlan.run = program_run if on else _loop_run

    print(f"CPU: {_machine().get('cpu', '?')}, {torch.get_num_threads()} threads; "
          f"read bandwidth {measure_bandwidth()['read_GBps']:.1f} GB/s")
    sampling = {"temperature": 0, "text_temperature": 0} if args.greedy else {}
    times: dict[bool, list[float]] = {True: [], False: []}
    with torch.inference_mode():
        for r in range(args.rounds):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                set_side(on)
                run = g.start(Dia2GenerationConfig(seed=0, max_steps=g.dep_from + args.steps + 8, **sampling), None,
                              entries=entries)
                steps = g.steps(run)
                for _ in range(g.dep_from + 2):  # the decoder-only steps, and one full step untimed
                    next(steps)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    next(steps)
                times[on].append((time.perf_counter() - t0) / args.steps * 1e3)
    set_side(True)
    diff = [a - b for a, b in zip(times[True], times[False])]
    for on, label in ((True, args.switch), (False, "without")):
        series = " ".join(f"{t:.1f}" for t in times[on])
        print(f"{label:>8}: {series} ms/step (median {statistics.median(times[on]):.1f})")
    print(f"{args.switch} - without, per round: mean {statistics.mean(diff):+.2f} ms, sd {statistics.stdev(diff):.2f}, "
          f"median {statistics.median(diff):+.2f} ({args.rounds} rounds)")


if __name__ == "__main__":
    main()
