"""Speed-ups applied to a built model from the outside; the model code does not know about them.

CPU float path: a decode step multiplies 2 rows (one utterance with CFG) by every weight, so it
is a chain of matrix-vector products bound by memory bandwidth. On the machines we measured
(benchmarks/README.md) `F.linear` (MKL sgemm) streams float32 weights at ~7 GB/s, while oneDNN
with the weight reordered once into its blocked layout reaches ~20 GB/s for float32 and
bfloat16 alike. `pack_linears` swaps every `nn.Linear` for a `PackedLinear` holding that
reordered weight; results equal `F.linear` up to float rounding order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .features import announce, cpu_features, onednn_bf16

# The reorder takes a batch-size hint; decode runs 2 rows per utterance.
_BATCH_HINT = 2


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """`y = x @ W.T` (no bias) through oneDNN with W pre-reordered (CPU, float32/bfloat16)."""

    independent_rows = False  # oneDNN picks its kernel by the row count (see rows_independent)

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), _BATCH_HINT)
        # A plain attribute, not a buffer: the opaque oneDNN tensor cannot be saved or moved, and
        # state_dict() should keep meaning "our checkpoint layout" (see dense_weight).
        self.packed = packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.packed, None, "none", [], "")
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def dense_weight(self) -> torch.Tensor:
        """The plain `[out, in]` weight (a new tensor)."""
        return self.packed.to_dense()

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        # state_dict() names the same tensors whichever CPU path a projection took: `weight`
        destination[prefix + "weight"] = self.dense_weight()

    def nbytes(self) -> int:
        return self.out_features * self.in_features * torch.empty((), dtype=self.dtype).element_size()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}, oneDNN"


class GemvLinear(nn.Module):
    """`y = x @ W.T` (no bias) with fastdia's float GEMV kernel for decode-sized inputs.

    Decode rows (one position per sequence: `(B, 1, in)`, or the fused steps' `(B, in)`, any B)
    and any call of up to `cpu_kernels.MAX_ROWS` rows go through fastdia.backends.cpu.kernels,
    which streams the plain `[out, in]` weight near memory bandwidth and computes each row on its
    own, so a request's numbers do not depend on its batch. Longer sequences (encoder, prefill:
    `(B, L, in)`, L > 1) are compute-bound and go to `F.linear` past MAX_ROWS rows (up to 2x
    faster there than the kernel, measured for float32 at 128-600 rows of Dia's shapes).
    The weight stays a plain parameter, so state_dict() is unchanged.
    """

    independent_rows = True  # see above: every batched decode call takes the kernel

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight.detach().contiguous(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .kernels import MAX_ROWS, float_gemv

        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] <= MAX_ROWS or x.dim() == 2 or x.shape[-2] == 1:
            y = float_gemv(x2, self.weight)
        elif self.weight.dtype == torch.bfloat16 and not cpu_features().native_bf16:
            # torch's bfloat16 matmul is emulated, and slow, without bfloat16 hardware (AVX2
            # CPUs): the float32 product of the bfloat16 weight a block at a time instead
            y = bf16_blocks(x2.to(torch.bfloat16).float(), self.weight)
        else:
            y = F.linear(x2.to(self.weight.dtype), self.weight)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def dense_weight(self) -> torch.Tensor:
        return self.weight

    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.weight.dtype}, gemv"


_BF16_BLOCK_ELEMENTS = 1 << 20  # weights widened at a time: 4 MB of float32, read back from cache


def bf16_blocks(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """float32 `x (M, K) @ weight.T` for a bfloat16 `weight (N, K)`, widened a block of rows at a time."""
    n, k = weight.shape
    block = max(1, _BF16_BLOCK_ELEMENTS // max(1, k))
    if n <= block:
        return F.linear(x, weight.float())
    y = torch.empty((x.shape[0], n), dtype=torch.float32)
    for r0 in range(0, n, block):
        y[:, r0: r0 + block] = F.linear(x, weight[r0: r0 + block].float())
    return y


class Bf16Linear(nn.Module):
    """`y = x @ W.T` (no bias) for a bfloat16 W on a CPU where neither fastdia's bfloat16 kernel
    nor oneDNN's bfloat16 linear runs (AVX2-only CPUs): W stays bfloat16 (half the bytes of
    float32), and is widened to float32 a block of output rows at a time for a float32 sgemm, so
    the widened block (4 MB at most) is read back from cache. Results are the float32 product of
    the bfloat16 weight and the input (rounding order aside)."""

    independent_rows = False

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight.detach().to(torch.bfloat16).contiguous(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = bf16_blocks(x.reshape(-1, self.in_features).float(), self.weight)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def dense_weight(self) -> torch.Tensor:
        return self.weight

    def nbytes(self) -> int:
        return self.weight.numel() * 2

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bfloat16 weight, float32 compute"


class DenseLinear(nn.Module):
    """`y = x @ W.T` (no bias) with torch's own matmul for a plain float weight, computed in the
    weight's dtype and returned in the input's, as every other module here does (a bare
    nn.Linear fails on a float32 input with a bfloat16 weight, as a quantized bfloat16 Dia2 feeds
    its float heads)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)

    independent_rows = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.to(self.weight.dtype), self.weight)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def dense_weight(self) -> torch.Tensor:
        return self.weight

    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.weight.dtype}, torch"


# The kernels read the input dimension in whole vectors (16 floats, 32 bfloat16s); a layer of
# another width (tiny test models have some) takes the next path.
_KERNEL_WIDTH = {torch.float32: 16, torch.bfloat16: 32}


def float_linear_path(dtype: torch.dtype, kernels: bool = True) -> str:
    """Which module `fast_float_linear` makes for a weight of `dtype` on this CPU: "fastdia"
    (GemvLinear), "onednn" (PackedLinear), "bf16-blocks" (Bf16Linear) or "torch" (DenseLinear).
    `kernels=False`: the choice for a width fastdia's kernels do not take."""
    from . import kernels as cpu_kernels

    if kernels and cpu_kernels.available() and dtype in (torch.float32, torch.bfloat16):
        return "fastdia"
    if dtype == torch.bfloat16 and not onednn_bf16():
        return "bf16-blocks"
    return "onednn" if onednn_available() else "torch"


def fast_float_linear(weight: torch.Tensor) -> nn.Module:
    """The fastest CPU module for a float `[out, in]` weight (see `float_linear_path`): fastdia's
    GEMV kernel when it is built for this CPU and dtype, else oneDNN's packed layout where oneDNN
    runs that dtype here, else a bfloat16 weight computed in float32 blocks, else a plain Linear."""
    path = float_linear_path(weight.dtype)
    if path == "fastdia" and weight.shape[1] % _KERNEL_WIDTH[weight.dtype]:
        path = float_linear_path(weight.dtype, kernels=False)
    if path == "fastdia":
        return GemvLinear(weight)
    if path == "bf16-blocks":
        announce("bfloat16 weights are computed in float32 blocks (oneDNN's bfloat16 linear needs "
                 "AVX512BW/VL/DQ or AVX-NE-CONVERT)")
        return Bf16Linear(weight)
    if path == "onednn":
        return PackedLinear(weight)
    return DenseLinear(weight)


# Every module fast_float_linear makes; each has `dense_weight()` and `nbytes()`.
FLOAT_LINEARS = (GemvLinear, PackedLinear, Bf16Linear, DenseLinear)


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The `[out, in]` float weight of an nn.Linear or of any of `FLOAT_LINEARS`."""
    return module.dense_weight() if isinstance(module, FLOAT_LINEARS) else module.weight


@torch.no_grad()
def pack_linears(model: nn.Module) -> nn.Module:
    """Swap every float `nn.Linear` (CPU, no bias) for the fastest CPU module, in place."""
    names = [n for n, m in model.named_modules()
             if type(m) is nn.Linear and m.bias is None and m.weight.device.type == "cpu"
             and m.weight.dtype in (torch.float32, torch.bfloat16)]
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        linear = getattr(owner, attr)
        setattr(owner, attr, fast_float_linear(linear.weight))
        del linear
    return model


@torch.no_grad()
def weights_only_bf16(model: nn.Module, float32_modules: tuple[str, ...] = ()) -> nn.Module:
    """A bfloat16 CPU model -> bfloat16 projections (fastdia's GEMV kernel) around float32
    everything else (norms, embeddings, the rare layer the kernel cannot take), in place, when the
    kernels run bfloat16 here; else unchanged.

    The projections are nearly all the bytes a step reads, so this reads what bfloat16 reads, but
    activations, norms and the KV cache stay float32 (the kernel rounds each activation row to
    bfloat16 and accumulates in float32), and the fused float32 decode step serves the model
    instead of ~2,000 small bfloat16 torch ops per step (2-core EPYC: 29% of the bandwidth
    ceiling before; benchmarks/README.md). The model's `compute_dtype` tells generators so.
    `float32_modules` become float32 projections (a model that reads its activation dtype from
    one, as Dia2Model does from its codebook-0 head).
    """
    from . import kernels as cpu_kernels

    if not cpu_kernels.available():
        return model
    for name, m in list(model.named_modules()):
        # a width the kernel cannot take (oneDNN-packed), or a projection that must stay float32
        if isinstance(m, PackedLinear):
            if m.dtype != torch.bfloat16:
                continue
            weight = m.dense_weight()
        elif name in float32_modules and getattr(m, "weight", None) is not None:
            weight = m.weight
        else:
            continue
        if weight.dtype == torch.bfloat16:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, fast_float_linear(weight.float()))
    keep = {id(p) for m in model.modules() if isinstance(m, GemvLinear) for p in m.parameters()}
    for m in model.modules():
        for name, p in list(m.named_parameters(recurse=False)):
            if id(p) not in keep and p.dtype == torch.bfloat16:
                setattr(m, name, nn.Parameter(p.float(), requires_grad=False))
        for name, b in list(m.named_buffers(recurse=False)):
            if b.dtype == torch.bfloat16:
                m.register_buffer(name, b.float(), persistent=name not in m._non_persistent_buffers_set)
    model.compute_dtype = torch.float32  # read by the generators: activations and cache
    return model


def rows_independent(model: nn.Module) -> bool:
    """Whether every matrix product in `model` runs on fastdia's kernels, which compute each
    activation row on its own: then a row's numbers do not depend on the rows beside it, and a
    batch scheduler may run any number of rows (a BLAS picks its kernel, and its rounding, by the
    row count). Each projection module says so itself (`independent_rows`); a bare nn.Linear is
    torch's BLAS."""
    for m in model.modules():
        if type(m) is nn.Linear or getattr(m, "independent_rows", True) is False:
            return False
    return True
