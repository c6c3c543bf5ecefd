"""Dia-1 through ONNX: export a model by name (`fastdia export onnx`), and load an export (or a
model exported once into a cache folder) for `backend="onnxruntime"`.

The graphs, the exporter and the onnxruntime driver are fastdia.backends.onnx's; this module only
loads what they are given, so the backend never reaches up into the family's loader.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..backends.onnx.common import ExportOptions
from ..backends.onnx.dia1_export import export_loaded
from ..backends.onnx.dia1_runtime import OrtDiaModel, export_cache_dir, has_codec, ort_codec
from ..backends.onnx.manifest import read_manifest
from ..errors import GenerationError
from .checkpoint import LoadedModel, load_model
from .config import PRESETS


def export_onnx(model: str | os.PathLike, out_dir: str | os.PathLike, options: ExportOptions = ExportOptions(),
                log=print) -> dict:
    """Export `model` (preset, directory or hub id: a float checkpoint, what `Dia.from_pretrained`
    takes) to `out_dir`; returns the manifest written (see `backends.onnx.dia1_export.export_loaded`)."""
    return export_loaded(load_model(model, torch.device("cpu"), torch.float32, optimize=False), out_dir, options,
                         log=log)


def load_onnx(model: str | os.PathLike, quantize: str | None = None, threads: int | None = None):
    """(a LoadedModel-like record over `OrtDiaModel`, the codec graph as a DAC or None) for `model`:
    an export folder, or anything `Dia.from_pretrained` takes (exported once, then reused)."""
    folder = Path(model).expanduser()
    if read_manifest(folder) is None:
        folder = export_cache_dir(model, quantize)
        if read_manifest(folder) is None:
            export_onnx(model, folder, ExportOptions(quantize=quantize), log=lambda line: None)
    elif quantize is not None:
        raise GenerationError(f"{folder} is an ONNX export already; quantize it with `fastdia export onnx "
                              f"--quantize {quantize}` instead")
    m = OrtDiaModel(folder, threads=threads)
    source = m.info.get("source", str(folder))
    layout = "onnx" + (f"-{m.info['quantize']}" if m.info.get("quantize") else "") + ("-static" if m.static else "")
    loaded = LoadedModel(m, m.config, layout, str(model), folder)
    codec = ort_codec(folder, m.info, threads) if has_codec(m.info) else None
    return loaded, codec, source in PRESETS
