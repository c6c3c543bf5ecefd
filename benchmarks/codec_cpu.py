"""The codecs on CPU: torch's convolutions and activations against fastdia's routed paths, in one process.

For each codec, one streaming unit of work is timed both ways, rounds alternating (this VM's speed
drifts from minute to minute, so the two paths share every minute): a DAC window as the server
decodes it (0.5 s of audio, 43 frames, with its context), and a Mimi streaming chunk (6 frames,
0.48 s). "torch" is the pure model (oneDNN convolutions, Snake in five torch operations); "fastdia"
is the same model after the routing every CPU float32 codec gets (the codecs' `accelerate`,
fastdia.backends.cpu.codec_ops). The largest difference between the two outputs is reported beside the times.

    python benchmarks/codec_cpu.py --threads 2 --out benchmarks/results/codec-cpu-2t.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastdia.backends.cpu import codec_ops  # noqa: E402
from fastdia.bench.common import measure_bandwidth  # noqa: E402
from fastdia.bench.runner import _machine  # noqa: E402
from fastdia.codecs.dac.codec import DAC, decode_windows  # noqa: E402
from fastdia.codecs.dac.codec import accelerate as dac_accelerate  # noqa: E402
from fastdia.codecs.mimi.codec import Mimi  # noqa: E402
from fastdia.codecs.mimi.codec import accelerate as mimi_accelerate  # noqa: E402


def _dac_unit(name: str):
    codec = DAC.from_pretrained(name)
    codes = np.random.default_rng(0).integers(0, codec.config.codebook_size, size=(400, codec.config.n_codebooks))
    window = codec.stream(43).plan_push(codes)[3]  # a steady-state window: context on both sides
    return codec.model, lambda: decode_windows(codec, [window])[0], f"DAC window, {window.codes.shape[0]} frames"


def _mimi_unit(name: str):
    codec = Mimi.from_pretrained(name)
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, codec.config.codebook_size, size=(6, codec.n_codebooks)) for _ in range(4)]

    def run():
        stream = codec.stream()  # four chunks from a fresh stream; the last one's audio is returned
        for c in chunks:
            out = stream.push(c)
        return out
    return codec.model, run, "Mimi stream, 4 chunks of 6 frames"


UNITS = {"tiny-random": _dac_unit, "dac-44khz-random": _dac_unit,
         "mimi-tiny-random": _mimi_unit, "mimi-random": _mimi_unit}


def measure(name: str, rounds: int, repeat: int, bandwidth_gbps: float) -> dict:
    model, run, what = UNITS[name](name)
    paths = {}
    route = dac_accelerate if name in ("tiny-random", "dac-44khz-random") else mimi_accelerate
    codec_ops.restore(model)
    ref = run()
    route(model)
    ours = run()
    times = {"torch": [], "fastdia": []}
    for _ in range(rounds):
        for path in ("torch", "fastdia"):
            if path == "torch":
                codec_ops.restore(model)
            else:
                route(model)
            run()  # warm: shapes, allocations
            t = time.perf_counter()
            for _ in range(repeat):
                run()
            times[path].append((time.perf_counter() - t) / repeat * 1e3)
    route(model)
    for path, ts in times.items():
        paths[path] = {"ms": round(statistics.median(ts), 3), "rounds_ms": [round(v, 3) for v in ts]}
    # The bandwidth ceiling: the unit's weights read once at the probed rate. Convolutions reuse
    # each weight across thousands of samples, so a codec is compute-bound far below it.
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    floor_ms = weight_bytes / (bandwidth_gbps * 1e9) * 1e3
    return {"codec": name, "unit": what, "paths": paths, "weight_bytes": weight_bytes,
            "bandwidth_floor_ms": floor_ms, "fraction_of_bandwidth_ceiling": floor_ms / paths["fastdia"]["ms"],
            "speedup": round(paths["torch"]["ms"] / paths["fastdia"]["ms"], 3),
            "max_abs_diff": float(np.abs(np.asarray(ref) - np.asarray(ours)).max()),
            "output_rms": float(np.sqrt(np.mean(np.asarray(ref, dtype=np.float64) ** 2)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--codecs", nargs="+", default=list(UNITS), choices=list(UNITS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    info = _machine()
    bandwidth = measure_bandwidth()["read_GBps"]
    print(f"cpu: {info.get('cpu')}, {args.threads} threads, kernels: {info.get('kernels')}; "
          f"read bandwidth {bandwidth:.1f} GB/s")
    results = []
    for name in args.codecs:
        repeat = 1 if name in ("dac-44khz-random", "mimi-random") else 10
        r = measure(name, args.rounds, repeat, bandwidth)
        results.append(r)
        print(f"{name:18s} {r['unit']:36s} torch {r['paths']['torch']['ms']:9.2f} ms  "
              f"fastdia {r['paths']['fastdia']['ms']:9.2f} ms  x{r['speedup']:.2f}  "
              f"max diff {r['max_abs_diff']:.2e} (rms {r['output_rms']:.2e}); "
              f"{100 * r['fraction_of_bandwidth_ceiling']:.1f}% of the bandwidth ceiling", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"machine": info, "threads": args.threads, "rounds": args.rounds,
                                        "bandwidth": {"read_GBps": bandwidth},
                                        "results": results}, indent=1))


if __name__ == "__main__":
    main()
