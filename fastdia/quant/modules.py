"""Weight-only int8 / int4 quantization as a module swap plus a state-dict transform.

The model code builds plain `nn.Linear(bias=False)` projections and never learns about this file:
`quantize_model` replaces them, from the outside, with modules that hold quantized weights and
compute `x @ W.T` with fastdia's CPU kernels (fastdia/backends/cpu/csrc/wonly.c, measured in
benchmarks/README.md), or torch's weight-only kernels where those cannot be built:

* **int8**, per output channel, symmetric: `W[n, k] = q[n, k] * scale[n]`, `q` in -127..127.
* **int4**, group-wise along the input dim (`quantize_int4`): `W[n, k] = step[n, g] * q[n, k] +
  offset[n, g]`, `q` in 0..15, `g = k // group_size`, with `step = rscale[n] * tscale[n, g]` an
  integer multiple (1..255) of a per-row unit, so the kernel applies it with one 16-bit
  integer multiply per 32 weights, and `offset = oscale[n] * offsets[n, g]` (int8): 4.5 bits
  per weight at group size 32.

Which layers (see `plan`), chosen by measurement: every projection of the decoder layers and the
output head is int8 in "int8" mode; "int4" puts the MLPs (70% of the bytes read per step) and
the attention queries (cross-attention `q`, the query rows of the self-attention QKV as a
`RowSplitLinear`) in int4 and keeps keys, values, outputs and the head int8, because Dia's
unscaled attention scores (spec 1.4) make them precision-sensitive. The encoder runs once per
utterance, so quantizing it gains nothing per step; it is stored in bfloat16 in "int8" mode and
int8 in "int4" mode, for memory.
The decoder's embedding table is int8 per row in both modes.

Activations stay in the model dtype outside the matmuls (the kernels quantize the 2-row input
to int16 per row internally, relative error ~1e-4), so norms, RoPE, attention and the KV cache
are unchanged.

The formats themselves (pure tensor transforms) are in fastdia.quant.formats; quantized
checkpoints (`fastdia convert`) and building a model straight into its quantized form live in
fastdia.dia1.quantized.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FastDiaError
from .formats import (
    int4_offsets,
    int4_steps,
    kernel_layout,
    kernel_rows,
    quantize_int4,
    quantize_int8,
    tile_pairs,
    unpack_int4,
    untile_pairs,
)

MODES = ("int8", "int4")
DEFAULT_GROUP_SIZE = 32
GROUP_SIZES = (32, 64, 128, 256)  # what the CPU int4 kernel accepts
KERNEL_DTYPE = torch.bfloat16  # activation dtype torch's CPU weight-only kernels are fast with
_INT4_ROW_MULTIPLE = 16  # the CPU int4 packing wants N % 16 == 0: pad rows with zeros


def check_mode(mode: str | None) -> str | None:
    if mode is None or mode in ("none", "float", ""):
        return None
    if mode not in MODES:
        raise FastDiaError(f"unknown quantization {mode!r}; use one of {', '.join(MODES)} (or none)")
    return mode


# --------------------------------------------------------------------------------------------
# Modules


def _kernels() -> bool:
    from ..backends.cpu import kernels as cpu_kernels

    return cpu_kernels.available()


_KERNELS = None


def _cpu_kernels():
    """fastdia.backends.cpu.kernels, imported once: a decode step calls these modules ~700 times
    (Dia2 2B), and each microsecond of Python per call is most of a millisecond per step."""
    global _KERNELS
    if _KERNELS is None:
        from ..backends.cpu import kernels

        _KERNELS = kernels
    return _KERNELS


class Int8Linear(nn.Module):
    """`y = x @ (q * scale).T`, weight-only int8 per output channel, no bias.

    With fastdia's kernels, the weight is held in their layout (`kernel_layout`: row pairs, long
    rows in groups of pairs) and every input goes through the kernel with float32 activations: a
    decode step, a batch of any size or a prefill (the text's cross-attention K/V, an audio
    prompt), which it takes MAX_ROWS rows a pass, each pass reading the weight once. Against
    dequantizing the weight a block of output rows at a time for an sgemm each (the earlier
    prefill path): 1.7-2.5x faster for 200-300 rows of Dia's shapes, int8 and int4, on 2 Zen 4
    cores, with the decode steps' own arithmetic (activations rounded to 15 bits per row: ~1e-4
    relative difference). Without the kernels the weight stays `[N, K]` for torch's
    `_weight_int8pack_mm` (bfloat16 activations).
    """

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.use_kernel = _kernels() and self.in_features % 32 == 0
        self.register_buffer("qweight", kernel_layout(qweight, 32, self.in_features) if self.use_kernel
                             else qweight.contiguous())
        self.register_buffer("scales", scale.float().contiguous())
        self._scales_bf16 = None if self.use_kernel else self.scales.to(KERNEL_DTYPE)

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> "Int8Linear":
        return cls(*quantize_int8(weight))

    @classmethod
    def from_stored(cls, qweight: torch.Tensor, scale: torch.Tensor) -> "Int8Linear":
        return cls(qweight, scale)

    def int8_weight(self) -> torch.Tensor:
        """The `[N, K]` int8 codes (a new tensor when the weight is tiled)."""
        if not self.use_kernel:
            return self.qweight
        return kernel_rows(self.qweight, 32, self.in_features, 0, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_kernel and x.dim() == 2 and x.dtype == torch.float32:
            return _cpu_kernels().q8_gemv(x, self.qweight, self.scales, self.out_features)  # a decode step: no reshapes
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if not self.use_kernel:
            y = torch.ops.aten._weight_int8pack_mm(x2.to(KERNEL_DTYPE), self.qweight, self._scales_bf16)
        else:
            y = _cpu_kernels().q8_gemv(x2.float(), self.qweight, self.scales, self.out_features)
        return y.view(*shape[:-1], self.out_features).to(x.dtype)

    @property
    def independent_rows(self) -> bool:
        """fastdia's kernel computes each row on its own; torch's picks by the row count."""
        return self.use_kernel

    def nbytes(self) -> int:
        return self.qweight.numel() + self.scales.numel() * 4

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


class Int4Linear(nn.Module):
    """`y = x @ W.T` with W int4 group-wise in fastdia's format (see `quantize_int4`).

    Every input goes through fastdia's int4 kernel (float32 activations, quantized per row to
    int16 inside it), a decode step or a prefill alike, as for `Int8Linear`. Without the kernels
    the weight is repacked once for torch's `_weight_int4pack_mm_for_cpu` instead.
    """

    def __init__(self, packed: torch.Tensor, tscale: torch.Tensor, rscale: torch.Tensor, offsets: torch.Tensor,
                 oscale: torch.Tensor, group_size: int) -> None:
        super().__init__()
        n, half_k = packed.shape
        self.out_features, self.in_features, self.group_size = n, 2 * half_k, group_size
        self.use_kernel = _kernels() and group_size in GROUP_SIZES  # the kernel shifts by log2(group)
        if self.use_kernel:  # row pairs tiled (`tile_pairs`): 32-byte blocks of codes, single tscales
            self.register_buffer("qweight", tile_pairs(packed, 32))
            self.register_buffer("tscale", tile_pairs(tscale, 1))
            self.register_buffer("rscale", rscale.float().contiguous())
            self.register_buffer("offsets", offsets.to(torch.int8).contiguous())
            self.register_buffer("oscale", oscale.float().contiguous())
            return
        # torch's layout: codes repacked by its own op, N padded to a multiple of 16, and
        # (K/group, N, 2) scale/zero pairs with W = (q - 8) * scale + zero.
        pad = -n % _INT4_ROW_MULTIPLE
        codes = unpack_int4(packed)
        scale = int4_steps(tscale, rscale)
        zero = int4_offsets(offsets, oscale) + 8.0 * scale
        if pad:
            codes = torch.cat((codes, codes.new_full((pad, codes.shape[1]), 8)))
            scale = torch.cat((scale, scale.new_zeros(pad, scale.shape[1])))
            zero = torch.cat((zero, zero.new_zeros(pad, zero.shape[1])))
        self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1))
        self.register_buffer("scales", torch.stack((scale, zero), dim=-1).transpose(0, 1).to(KERNEL_DTYPE).contiguous())

    @classmethod
    def from_float(cls, weight: torch.Tensor, group_size: int) -> "Int4Linear":
        return cls(*quantize_int4(weight, group_size), group_size)

    @classmethod
    def from_stored(cls, packed: torch.Tensor, tscale: torch.Tensor, rscale: torch.Tensor, offsets: torch.Tensor,
                    oscale: torch.Tensor, group_size: int) -> "Int4Linear":
        return cls(packed, tscale, rscale, offsets, oscale, group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_kernel and x.dim() == 2 and x.dtype == torch.float32:
            return self._kernel(x)
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if not self.use_kernel:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(KERNEL_DTYPE), self.qweight, self.group_size,
                                                          self.scales)
            y = y[:, : self.out_features]
        else:
            y = self._kernel(x2.float())
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        return _cpu_kernels().q4_gemv(x, self.qweight, self.tscale, self.rscale, self.offsets, self.oscale,
                                      self.group_size, self.out_features)

    def int4_parts(self) -> tuple[torch.Tensor, ...]:
        """(packed `[N, K/2]`, tscale `[N, G]`, rscale, offsets, oscale): the untiled format of `quantize_int4`."""
        if not self.use_kernel:
            raise RuntimeError("int4_parts() needs fastdia's kernel layout; this module holds torch's packing")
        n = self.out_features
        return (untile_pairs(self.qweight, 32)[:n], untile_pairs(self.tscale, 1)[:n], self.rscale, self.offsets,
                self.oscale)

    @property
    def independent_rows(self) -> bool:
        return self.use_kernel

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 group {self.group_size}"


class RowSplitLinear(nn.Module):
    """One projection held as two blocks of output rows in different formats: `first` computes
    outputs `[0, split)`, `rest` the others.

    The decoder's fused QKV in "int4" mode: its query rows take int4 at no measured cost in
    agreement, while its key/value rows, which every later step reads back from the KV cache,
    stay int8 (all of QKV in int4 cost 4 points, benchmarks/README.md).
    """

    def __init__(self, first: nn.Module, rest: nn.Module) -> None:
        super().__init__()
        if first.in_features != rest.in_features:
            raise ValueError("row blocks of one projection must share in_features")
        self.first, self.rest = first, rest
        self.in_features = first.in_features
        self.out_features = first.out_features + rest.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.first(x), self.rest(x)), dim=-1)

    def nbytes(self) -> int:
        return self.first.nbytes() + self.rest.nbytes()

    def extra_repr(self) -> str:
        return f"split at row {self.first.out_features}"


class Int8Embedding(nn.Module):
    """An embedding table stored int8 per row (`quantize_int8`), rows dequantized when looked up.

    The decoder's table (9 channels x 1028 ids x 2048) is 76 MB in float32 and only 9 rows per
    position are ever read, so it costs memory, not speed.
    """

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.dtype = dtype
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scales", scale.float().contiguous())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.qweight[ids].float() * self.scales[ids].unsqueeze(-1)
        return rows.to(self.dtype)

    def nbytes(self) -> int:
        return self.qweight.numel() + self.scales.numel() * 4

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per row"


# --------------------------------------------------------------------------------------------
# Which layer gets what


def plan(name: str, in_features: int, mode: str, group_size: int) -> str | None:
    """The format for the Linear called `name` (a DiaModel module path) under `mode`.

    Returns "int8", "int4", "int4-query" (query rows int4, the rest int8: `RowSplitLinear`),
    "bf16" (bfloat16 weights), "int8-embedding" or None (keep as is).
    Measured on random models (benchmarks/README.md): the attention projections are the
    precision-sensitive part (scores are unscaled, spec 1.4), the MLPs (70% of the per-step
    bytes) take int4 well, and the encoder, run once per utterance, gains nothing per step from
    quantization. The decoder's embedding table is stored int8 for memory.

    In "int4" mode the queries (the cross-attention's and the query rows of the self-attention's
    fused QKV) are int4 too: each costs under a point of top-1 agreement on the 1.6B random model,
    where every other part put in int4 alone cost 3 to 18 points (keys/values, outputs, encoder,
    head: their errors reach every later step the same way).
    """
    mode = check_mode(mode)
    if mode is None:
        return None
    if name.endswith("embedding"):
        return "int8-embedding" if name == "decoder.embedding" else None
    if name.startswith("encoder."):
        return "int8" if mode == "int4" else "bf16"
    int4_ok = in_features % group_size == 0 and in_features % 64 == 0
    if mode == "int4" and (".mlp." in name or name.endswith("cross_attn.q")) and int4_ok:
        return "int4"
    if mode == "int4" and name.endswith("self_attn.qkv") and int4_ok:
        return "int4-query"
    return "int8"


def linear_names(model: nn.Module) -> list[str]:
    """Module paths of every projection (and embedding table) a quantization may replace."""
    from ..backends.cpu.packed import FLOAT_LINEARS

    kinds = (nn.Linear, nn.Embedding, *FLOAT_LINEARS)
    return [n for n, m in model.named_modules() if isinstance(m, kinds)]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def query_rows(cfg) -> int:
    """Rows of the decoder's fused self-attention QKV weight that are queries ("int4-query")."""
    return cfg.decoder.n_head * cfg.decoder.head_dim


def make_module(fmt: str | None, weight: torch.Tensor, group_size: int,
                dtype: torch.dtype = torch.float32, split: int | None = None) -> nn.Module:
    """The module for a float `[out, in]` weight in format `fmt` (see `plan`; not None);
    "int4-query" needs `split`, the number of query rows (`query_rows`)."""
    if fmt == "int4-query":
        if split is None:
            raise ValueError("int4-query needs the number of query rows")
        return RowSplitLinear(Int4Linear.from_float(weight[:split], group_size),
                              Int8Linear.from_float(weight[split:]))
    if fmt == "int8-embedding":
        return Int8Embedding(*quantize_int8(weight), dtype=dtype)
    if fmt == "int8":
        return Int8Linear.from_float(weight)
    if fmt == "int4":
        return Int4Linear.from_float(weight, group_size)
    if fmt == "bf16":
        weight = weight.to(torch.bfloat16)
    from ..backends.cpu.packed import fast_float_linear

    return fast_float_linear(weight)


def _dense_weight(module: nn.Module) -> torch.Tensor:
    from ..backends.cpu.packed import dense_weight

    return dense_weight(module)


@torch.no_grad()
def quantize_model(model: nn.Module, mode: str, group_size: int = DEFAULT_GROUP_SIZE) -> nn.Module:
    """Replace the model's float projections by int8/int4 modules, in place, one at a time.

    Each float weight is released as soon as its quantized module exists, so the peak memory is
    the float model plus one layer, not two models.

    Args:
        model: a DiaModel (float, CPU).
        mode: "int8" or "int4" (None/"none" does nothing).
        group_size: int4 group size along the input dimension (32, 64, 128 or 256).

    Returns:
        `model`.
    """
    mode = check_mode(mode)
    if mode is None:
        return model
    if group_size not in GROUP_SIZES:
        raise FastDiaError(f"int4 group size must be one of {GROUP_SIZES}, got {group_size}")
    for name in linear_names(model):
        module = model.get_submodule(name)
        weight = _dense_weight(module)
        fmt = plan(name, weight.shape[1], mode, group_size)
        if fmt is None:
            continue
        new = make_module(fmt, weight, group_size, dtype=weight.dtype, split=query_rows(model.config))
        del weight
        _set(model, name, new)
    return model


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (quantized weights at their stored size)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
