"""Convert: save a checkpoint in fastdia's own layout, optionally quantized, for fast loads.

The output directory holds config.json (transformers layout plus a `fastdia_layout` marker and,
when quantized, a `fastdia_quantization` section) and model.safetensors with our fused tensors:
int8 / int4 weights as they are used at run time (fastdia.quant.modules), so loading builds the modules
on the meta device and assigns the stored tensors, with no float round trip.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..errors import FastDiaError


def convert(source: str | Path, out_dir: str | Path, quantize: str | None = None,
            group_size: int | None = None, dtype: str | torch.dtype = "float32") -> dict:
    """Convert `source` (preset, directory, hub id; Dia2 models go to fastdia.quant.dia2.convert_dia2) into `out_dir`.

    Args:
        quantize: None (float, our fused layout), "int8" or "int4".
        group_size: int4 group size (default fastdia.quant.modules.DEFAULT_GROUP_SIZE).
        dtype: dtype of the tensors stored in float ("float32" or "bfloat16").

    Returns:
        A summary: output path, mode, bytes written, seconds.
    """
    from ..config_dia2 import is_dia2
    from ..backends.device import resolve_dtype
    from ..config import PRESETS, load_config
    from ..quant import modules as quant
    from ..quant import store as quant_store
    from .dia1_layouts import load_dir_state
    from .dia1_load import _choose_files, _drain, iter_random_state
    from .hub import resolve_dir

    mode = quant.check_mode(quantize)
    if is_dia2(source):
        from ..quant.dia2 import convert_dia2

        dt = resolve_dtype("float32" if dtype == "auto" else dtype, torch.device("cpu"))
        return convert_dia2(source, out_dir, mode, group_size, dt)
    group = group_size or quant.DEFAULT_GROUP_SIZE
    if group not in quant.GROUP_SIZES:
        raise FastDiaError(f"int4 group size must be one of {quant.GROUP_SIZES}, got {group}")
    dt = resolve_dtype("float32" if dtype == "auto" else dtype, torch.device("cpu"))
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not (out / "config.json").exists():
            raise FastDiaError(f"{out} exists and is not empty; choose a new directory")
    t0 = time.perf_counter()
    name = str(source)
    if name in PRESETS:
        cfg = PRESETS[name]
        tensors = iter_random_state(cfg, dtype=dt)
    else:
        directory = resolve_dir(source, _choose_files, what="model")
        cfg = load_config(directory / "config.json")
        if quant_store.stored_quantization(directory / "config.json") is not None:
            raise FastDiaError(f"{directory} was written by fastdia convert already; convert the original")
        state, _ = load_dir_state(directory, cfg, dt)
        tensors = _drain(state)
    with torch.no_grad():
        quant_store.save_converted(tensors, cfg, out, mode, group)
    size = sum(f.stat().st_size for f in out.iterdir())
    return {"out": str(out), "quantize": mode or "none", "group_size": group if mode == "int4" else None,
            "bytes": size, "seconds": time.perf_counter() - t0}
