"""`fastdia.load` and `convert`: one entry point for both families, so the CLI and server need not
know which; each family's half lives in its own package.

`convert` saves a checkpoint in fastdia's own layout, optionally quantized, for fast loads: the
output directory holds config.json (with a `fastdia_layout` marker and, when quantized, a
`fastdia_quantization` section) and model.safetensors with the tensors as they are used at run
time (int8 / int4 in fastdia.quant's formats), so loading builds the modules on the meta device
and assigns the stored tensors, with no float round trip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .backends.device import resolve_dtype
from .quant.modules import check_mode


def load(model: str | Path, **options: Any):
    """Load `model` (preset, directory or hub id) as `Dia2` or `Dia`, read from its checkpoint.

    Args:
        model: e.g. "nari-labs/Dia-1.6B-0626", "nari-labs/Dia2-2B", a local folder, or a preset
            ("tiny-random", "dia-1.6b-random", "dia2-tiny-random", "dia2-2b-random").
        **options: passed to `from_pretrained` (device, dtype, quantize, codec).
    """
    from .dia1.api import Dia
    from .dia2.api import Dia2, is_dia2

    return (Dia2 if is_dia2(model) else Dia).from_pretrained(model, **options)


def convert(source: str | Path, out_dir: str | Path, quantize: str | None = None,
            group_size: int | None = None, dtype: str | torch.dtype = "float32") -> dict:
    """Convert `source` (preset, directory, hub id, either family) into `out_dir`.

    Args:
        quantize: None (float, our fused layout), "int8" or "int4".
        group_size: int4 group size (default fastdia.quant.modules.DEFAULT_GROUP_SIZE).
        dtype: dtype of the tensors stored in float ("float32" or "bfloat16").

    Returns:
        A summary: output path, mode, bytes written, seconds.
    """
    from .dia1.checkpoint import convert_dia1
    from .dia2.api import is_dia2
    from .dia2.checkpoint import convert_dia2

    mode = check_mode(quantize)
    dt = resolve_dtype("float32" if dtype == "auto" else dtype, torch.device("cpu"))
    return (convert_dia2 if is_dia2(source) else convert_dia1)(source, out_dir, mode, group_size, dt)
