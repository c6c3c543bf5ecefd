"""Device and dtype resolution shared by the model and the codec."""

from __future__ import annotations

import torch

from ..errors import FastDiaError
from .cpu.features import cpu_features

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto"/None into cuda when available, else cpu; validate anything else."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise FastDiaError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FastDiaError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    return dev


# Below this size a decode step is dominated by per-op overhead, not by streaming weights, and
# bfloat16 gains nothing on CPU (measured: tiny-random 396 vs 409 steps/s); above, it halves
# the bytes read per step (dia-1.6b: 3.2 -> 5.8 steps/s on 2 AVX512-BF16 cores).
BF16_MIN_PARAMETERS = 100_000_000


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX-BF16 (bfloat16 matmuls in hardware)."""
    return cpu_features().native_bf16


def resolve_dtype(
    dtype: str | torch.dtype | None,
    device: torch.device,
    parameters: int | None = None,
    quantize: str | None = None,
) -> torch.dtype:
    """Resolve a dtype name; "auto" picks the fastest sensible dtype for `device`.

    "auto" is bfloat16 on CUDA. On CPU it is bfloat16 only where that is measurably faster (see
    benchmarks/README.md): a CPU with native bfloat16, a model of at least `BF16_MIN_PARAMETERS`
    parameters (`parameters`; unknown counts as small), and no weight quantization (int8/int4
    weights are read at their own size either way, and float32 activations keep them closest to
    the float model). Otherwise float32, whose generation output is unchanged by this rule.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        if (device.type == "cpu" and quantize in (None, "none") and parameters is not None
                and parameters >= BF16_MIN_PARAMETERS and cpu_has_native_bf16()):
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise FastDiaError(
            f"unknown dtype {dtype!r}; use one of auto, float32, bfloat16, float16"
        ) from None
