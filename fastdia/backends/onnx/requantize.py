"""Quantize an existing float32 export folder of either family (`fastdia export onnx --from`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from . import dia1_export, dia2_export
from .common import ExportOptions
from .quantize import quantize_graphs


def quantize_export(src: str | Path, dst: str | Path, mode: str, block_size: int = 32, log=print) -> dict:
    """Quantize an existing float32 export folder `src` into `dst` (no torch export); returns its manifest."""
    import json
    import time

    from .manifest import describe_graph, read_manifest

    src, dst = Path(src), Path(dst)
    info = read_manifest(src)
    if info is None or info.get("quantize"):
        raise ValueError(f"{src} is not a float32 fastdia ONNX export")
    dst.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    graphs = {k: {"file": v["file"], "external_data": v["external_data"]} for k, v in info["graphs"].items()}
    static = info.get("static_shapes") if info.get("static") else None
    options = ExportOptions(quantize=mode, block_size=block_size, static=bool(static))
    if info.get("family") == "dia2":
        done = quantize_graphs(src, dst, graphs, options, static, dia2_export.record_calibration, log=log,
                               quantized=dia2_export.quantized_graphs(graphs))
        for name in info.get("tokenizer_files", ()):
            shutil.copyfile(src / name, dst / name)
    else:
        done = quantize_graphs(src, dst, graphs, options, static,
                               dia1_export.record_calibration, log=log)
    raw = json.loads((src / "config.json").read_text())
    described = {k: {**describe_graph(dst, g), "purpose": info["graphs"][k]["purpose"]} for k, g in done.items()}
    raw["fastdia_onnx"].update(quantize=mode, graphs=described, quantize_seconds=round(time.perf_counter() - started, 1))
    (dst / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    return raw["fastdia_onnx"]
