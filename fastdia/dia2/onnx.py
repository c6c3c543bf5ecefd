"""Dia2 through ONNX: export a model by name (`fastdia export onnx`), and load an export for
`backend="onnxruntime"`.

The graphs, the exporter and the onnxruntime driver are fastdia.backends.onnx's; this module only
loads what they are given (the model, its codec source, its tokenizer files), so the backend never
reaches up into the family's loader.
"""

from __future__ import annotations

import os

import torch

from ..backends.onnx.common import ExportOptions, ort_session
from ..backends.onnx.dia2_export import export_dia2_loaded
from ..backends.onnx.dia2_runtime import OrtDia2Model, OrtMimi, ort_tokenizer
from ..errors import GenerationError
from .checkpoint import LoadedDia2, codec_source, load_dia2, tokenizer_files, tokenizer_folder
from .config import DIA2_PRESETS


def export_dia2_onnx(model, out_dir, options: ExportOptions = ExportOptions(), log=print) -> dict:
    """Export a Dia2 `model` (preset, directory or hub id: a float checkpoint, what
    `Dia2.from_pretrained` takes) to `out_dir`; returns the manifest written. `options.codec` is a
    Mimi source (default: the model's own)."""
    loaded = load_dia2(model, torch.device("cpu"), torch.float32, optimize=False)
    files = tokenizer_files(loaded)
    if loaded.directory is not None and not any(f.name == "tokenizer.json" for f in files):
        raise GenerationError(f"no tokenizer.json in {tokenizer_folder(loaded)}; a Dia2 folder needs its "
                              f"tokenizer files")
    codec = codec_source(loaded, options.codec)
    return export_dia2_loaded(loaded, out_dir, codec, files, options, log=log)


def load_dia2_onnx(folder: str | os.PathLike, threads: int | None = None):
    """(LoadedDia2 over `OrtDia2Model`, tokenizer, the codec graph as a Mimi or None, random preset?)."""
    m = OrtDia2Model(folder, threads)
    codec = None
    if "codec" in m.info["graphs"]:
        session = ort_session(m.folder / m.info["graphs"]["codec"]["file"], threads or torch.get_num_threads())
        codec = OrtMimi(session, m.info["codec"], m.static)
    loaded = LoadedDia2(m, m.config, m.info.get("source", str(folder)), m.folder)
    return loaded, ort_tokenizer(m.folder, m.info), codec, m.info.get("source") in DIA2_PRESETS
