"""The CPU fast path for Dia2, applied to a built Dia2Model from outside (the model file is untouched).

A Dia2 step is two chains of matrix-vector products over 2 rows per script (the CFG pair): the
decoder (28 layers on 2B) and 31 depformer stages of 4 layers each, so it is bound by how fast
weights stream from memory. `accelerate_dia2` swaps every float projection still in the model
(all of them for a float model; the decoder heads of a quantized one, see fastdia.dia2.quantized) for
`fast_float_linear` (fastdia's GEMV kernel, else oneDNN's packed layout), the same swap Dia-1's
loader makes. The kernels compute each row on its own, so a script's numbers do not depend on
the batch it decodes in.
"""

from __future__ import annotations

import torch
from torch import nn

from .packed import DenseLinear, fast_float_linear

# The GEMV kernels step through the input dimension 32 floats at a time (wonly.c).
_K_MULTIPLE = 32
_DTYPE_SOURCES = ("transformer.cb0_head",)


def dtype_sources() -> tuple[str, ...]:
    """The modules Dia2Model reads its activation and cache dtype from."""
    return _DTYPE_SOURCES


@torch.no_grad()
def accelerate_dia2(model: nn.Module) -> nn.Module:
    """Swap the model's bias-free float32/bfloat16 `nn.Linear`s on CPU for fast modules, in place."""
    names = [n for n, m in model.named_modules()
             if type(m) is nn.Linear and m.bias is None and m.weight.device.type == "cpu"
             and m.weight.dtype in (torch.float32, torch.bfloat16) and m.in_features % _K_MULTIPLE == 0]
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        linear = getattr(owner, attr)
        fast = fast_float_linear(linear.weight)
        if name in _DTYPE_SOURCES and not hasattr(fast, "weight"):
            # Dia2Model reads its activation dtype from this weight (0.1% of a step's bytes), so it
            # keeps a plain one; but it takes any input dtype, as the fast modules do
            fast = DenseLinear(linear.weight)
        setattr(owner, attr, fast)
        del linear
    return model
