"""`fastdia.load`: one entry point for both families, so the CLI and server need not know which."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load(model: str | Path, **options: Any):
    """Load `model` (preset, directory or hub id) as `Dia2` or `Dia`, read from its checkpoint.

    Args:
        model: e.g. "nari-labs/Dia-1.6B-0626", "nari-labs/Dia2-2B", a local folder, or a preset
            ("tiny-random", "dia-1.6b-random", "dia2-tiny-random", "dia2-2b-random").
        **options: passed to `from_pretrained` (device, dtype, quantize, codec).
    """
    from .api import Dia
    from .api_dia2 import Dia2, is_dia2

    return (Dia2 if is_dia2(model) else Dia).from_pretrained(model, **options)
