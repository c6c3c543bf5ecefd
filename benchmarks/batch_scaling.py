"""Aggregate decode throughput against batch size, both families, in one process.

`fastdia bench --batch N` runs each batch size in its own process, minutes apart; on a shared
machine the memory bandwidth drifts between them (this VM: 21-50 GB/s within an hour), which
swamps the ratio this measures. Here one loaded model runs batch 1, 2, 4, 8 in turn, `--rounds`
times, and the ratio to batch 1 is taken per round, then the median over rounds.

    python benchmarks/batch_scaling.py --family dia2 --model /path/to/dia2-int8 --out benchmarks/results/batch-dia2.json
    python benchmarks/batch_scaling.py --family dia1 --model dia-1.6b-random --quantize int8 --out ...

Dia2 counts full steps only (after the decoder-only first steps); a batch step decodes every
script once (2 CFG rows each) and the aggregate is script-steps per second.

The same run gives each batch size its roofline (fastdia.bench.roofline): the step's weight bytes at
the read bandwidth probed after each round's batch-1 run (median over rounds), and its MACs at
the kernels' in-cache rates timed with that batch's row count. The bound's ratio to batch 1 is
what these kernels allow on this machine: batch 1 is memory-bound, so a batch whose multiplies
take longer than the weights take to stream cannot scale with its rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fastdia.bench import roofline
from fastdia.bench.common import read_bandwidth_now
from fastdia.bench.runner import _machine


def dia2_runner(model: str, quantize: str | None):
    from fastdia.bench.dia2 import DEFAULT_TEXT_DIA2, load_tts, roofline_inputs_dia2, step_weight_bytes_dia2
    from fastdia.dia2.options import Dia2GenerationConfig
    from fastdia.dia2.slots import Dia2SlotBatch

    tts, _ = load_tts({"model": model, "device": "cpu", "dtype": "auto", "quantize": quantize})
    g = tts._generator
    entries = tts._entries(DEFAULT_TEXT_DIA2)
    skip = max(g.dep_from, 0)

    def run(batch: int, steps: int) -> float:
        total = skip + steps + 2
        slots = Dia2SlotBatch(g, batch, 2 * (total + 1) + 2 * g.max_delay + 4)
        for i in range(batch):
            slots.join(Dia2GenerationConfig(seed=i, max_steps=total), None, entries=entries)
        for _ in range(skip + 1):
            slots.step()
        t0 = time.perf_counter()
        done = 0
        for _ in range(steps):
            done += len(slots.step())
        return done / (time.perf_counter() - t0)

    def roof(batch: int) -> tuple[int, dict]:
        return step_weight_bytes_dia2(tts.model)["dram"], roofline_inputs_dia2(tts.model, 2 * batch)

    return run, roof


def dia1_runner(model: str, quantize: str | None):
    from fastdia.bench.dia1 import roofline_inputs, step_weight_bytes
    from fastdia.dia1.checkpoint import load_model
    from fastdia.dia1.generation import Dia1Generator
    from fastdia.dia1.options import GenerationConfig
    from fastdia.text import tokenize

    dev = torch.device("cpu")
    loaded = load_model(model, dev, torch.float32, quantize=quantize)
    gen = Dia1Generator(loaded.model, dev, torch.float32)
    text = tokenize("[S1] Hello there, how are you today? [S2] I am fine, thank you. (laughs)")

    def run(batch: int, steps: int) -> float:
        cfg = GenerationConfig(max_tokens=steps + 40, seed=0)
        state = gen.prepare([text] * batch, [None] * batch, cfg)
        gen.step(state)
        t0 = time.perf_counter()
        for _ in range(steps):
            gen.step(state)
        return batch * steps / (time.perf_counter() - t0)

    def roof(batch: int) -> tuple[int, dict]:
        return step_weight_bytes(loaded.model), roofline_inputs(loaded.model, 2 * batch)

    return run, roof


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=["dia1", "dia2"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--quantize", default=None)
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    run, roof = (dia2_runner if args.family == "dia2" else dia1_runner)(args.model, args.quantize)
    rates: dict[int, list[float]] = {b: [] for b in batches}
    probes: list[float] = []
    with torch.inference_mode():
        run(batches[0], 2)  # warm-up
        for r in range(args.rounds):
            for b in batches:
                rates[b].append(run(b, args.steps))
                if b == batches[0]:
                    probes.append(read_bandwidth_now())
            print(f"round {r}: " + ", ".join(f"batch {b}: {rates[b][-1]:.2f}" for b in batches)
                  + f" (read bandwidth after batch {batches[0]}: {probes[-1]:.1f} GB/s)", flush=True)
    bandwidth = statistics.median(probes)
    base = batches[0]
    summary = {b: {"aggregate_steps_per_s": statistics.median(rates[b]),
                   "vs_batch_1": statistics.median(x / y for x, y in zip(rates[b], rates[base])),
                   "rounds": rates[b]} for b in batches}
    for b in batches:  # the roofline of each batch size, from this run's bandwidth and kernel rates
        dram, inputs = roof(b)
        bound = roofline.bound(dram, bandwidth * 1e9, inputs["macs_per_step"], inputs["kernel_rates"])
        summary[b]["roofline"] = {**bound, "weight_bytes_per_step": dram, "rows": 2 * b,
                                  "macs_per_step": inputs["macs_per_step"],
                                  "kernel_macs_per_s": {f: v["macs_per_s"] for f, v in inputs["kernel_rates"].items()},
                                  "bound_script_steps_per_s": b * bound["bound_steps_per_s"]}
    for b in batches:
        s, rf = summary[b], summary[b]["roofline"]
        s["bound_vs_batch_1"] = rf["bound_script_steps_per_s"] / summary[base]["roofline"]["bound_script_steps_per_s"]
        s["fraction_of_bound"] = s["aggregate_steps_per_s"] / rf["bound_script_steps_per_s"]
        rates_txt = ", ".join(f"{f} {v / 1e9:.0f}" for f, v in rf["kernel_macs_per_s"].items())
        print(f"batch {b}: {s['aggregate_steps_per_s']:.2f} script-steps/s, {s['vs_batch_1']:.2f}x batch {base}; "
              f"roofline {rf['bound_script_steps_per_s']:.2f} ({rf['limit']}-bound: memory {rf['memory_ms']:.1f} ms, "
              f"compute {rf['compute_ms']:.1f} ms at {rates_txt} GMAC/s), {s['bound_vs_batch_1']:.2f}x batch {base}; "
              f"measured {100 * s['fraction_of_bound']:.0f}% of it")
    with open(args.out, "w") as f:
        json.dump({"family": args.family, "model": args.model, "quantize": args.quantize, "threads": torch.get_num_threads(),
                   "machine": _machine(), "steps": args.steps, "read_GBps_after_batch_1": probes,
                   "read_GBps": bandwidth, "batches": summary}, f, indent=1)


if __name__ == "__main__":
    main()
