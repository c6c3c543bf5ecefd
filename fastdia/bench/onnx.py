"""`fastdia bench --backend onnxruntime`: the onnxruntime backend's decode speed, beside PyTorch's.

Each variant runs in its own child process (fastdia.bench.runner.run_child) so its peak RSS is its own:
the model is an ONNX export folder, or any model `Dia.from_pretrained` takes, exported once
(float32, or `--quantize int8/int4` through onnxruntime's quantizers) into the export cache.
The step is the same `Dia1Generator.step` the PyTorch rows time; only the decoder behind it is
onnxruntime's. The weight bytes a step reads are the decoder graph's initializers (every
projection is read once per step, as in PyTorch), so the bandwidth ceiling is comparable.
"""

from __future__ import annotations

import time
from .common import peak_rss_bytes


def child_onnx(spec: dict) -> dict:
    import torch

    from ..dia1.generation import Dia1Generator
    from ..dia1.options import GenerationConfig
    from ..dia1.onnx import load_onnx
    from ..text import tokenize

    if spec.get("family") == "dia2":
        raise RuntimeError("--backend onnxruntime benchmarks Dia-1 models")
    quantize = spec.get("quantize")
    t0 = time.perf_counter()
    loaded, _codec, _random = load_onnx(spec["model"], quantize=quantize, threads=spec["threads"])
    load_s = time.perf_counter() - t0
    model = loaded.model
    gen = Dia1Generator(model, torch.device("cpu"), torch.float32)
    steps, batch = spec["steps"], spec["batch"]
    gcfg = GenerationConfig(max_tokens=max(steps + 1, 2 * loaded.config.max_delay + 2), seed=0)
    times = []
    with torch.inference_mode():
        t1 = time.perf_counter()
        state = gen.prepare([tokenize(spec["text"])] * batch, [None] * batch, gcfg)
        t2 = time.perf_counter()
        for _ in range(steps):
            gen.step(state)
            times.append(time.perf_counter())
    per_step = [b - a for a, b in zip([t2] + times[:-1], times)]
    steady = per_step[1:] or per_step
    graphs = model.info["graphs"]
    return {
        "impl": "onnxruntime",
        "dtype": "float32",
        "quantize": model.info.get("quantize") or "none",
        "folder": str(loaded.directory),
        "load_s": load_s,
        "prefill_ms": (t2 - t1) * 1e3,
        "ttfs_ms": (times[0] - t1) * 1e3,
        "steps_per_s": len(steady) / sum(steady),
        "median_step_ms": sorted(steady)[len(steady) // 2] * 1e3,
        "weight_bytes_per_step": graphs["decoder"]["bytes"],
        "parameters_bytes": sum(g["bytes"] for g in graphs.values()),
        "peak_rss_bytes": peak_rss_bytes(),
        "ttfa_s": None,
    }
