"""onnxruntime backend decode speed for exported folders (one process per folder, so peak RSS is its own).

Run: python benchmarks/onnx_bench.py FOLDER [FOLDER ...]  -> appends to benchmarks/onnx_bench.json
Steps/s is measured over `--steps` decode steps after a warm-up, batch 1 (2 CFG rows); the
bandwidth fraction divides the weight bytes read per step (the decoder graph's size) by the
step time and the machine's measured copy bandwidth (`--bandwidth-gbs`).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def measure(folder: str, steps: int) -> dict:
    import torch

    from fastdia.dia1.generation import Dia1Generator
    from fastdia.dia1.options import GenerationConfig
    from fastdia.backends.onnx.dia1_runtime import OrtDiaModel
    from fastdia.text import tokenize

    t = time.perf_counter()
    model = OrtDiaModel(folder)
    load = time.perf_counter() - t
    gen = Dia1Generator(model, torch.device("cpu"), torch.float32)
    opts = GenerationConfig(max_tokens=steps + 32, temperature=0.0)
    with torch.inference_mode():
        state = gen.prepare([tokenize("[S1] Hello there, how are you today? [S2] Fine, thanks.")], [None], opts)
        gen.step(state)  # warm-up
        t = time.perf_counter()
        for _ in range(steps):
            gen.step(state)
        dt = (time.perf_counter() - t) / steps
    dec = model.info["graphs"]["decoder"]["bytes"]
    return {"folder": folder, "quantize": model.info.get("quantize") or "float32", "load_s": round(load, 1),
            "steps_per_s": round(1 / dt, 3), "ms_per_step": round(dt * 1e3, 1), "decoder_bytes": dec,
            "gb_per_s_of_weights": round(dec / dt / 1e9, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
            "threads": os.cpu_count()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folders", nargs="+")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--bandwidth-gbs", type=float, default=None)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(measure(a.folders[0], a.steps)))
        return
    out = Path(__file__).with_suffix(".json")
    results = json.loads(out.read_text()) if out.exists() else []
    for folder in a.folders:
        line = subprocess.run([sys.executable, __file__, folder, "--steps", str(a.steps), "--one"],
                              capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(line)
        if a.bandwidth_gbs:
            r["bandwidth_fraction"] = round(r["gb_per_s_of_weights"] / a.bandwidth_gbs, 3)
        print(r, flush=True)
        results.append(r)
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
