"""A fused float32 CPU decode step for the Dia-1 decoder, applied from outside the model.

`Decoder.forward` is the reference: pure torch, any device, dtype and number of positions. On a
CPU with fastdia's kernels (fastdia.backends.cpu.kernels), a decode step (one position per row) spends as
long in ~2,000 small torch ops (norms, RoPE, cache writes, single-query attention, SiLU: each a
few microseconds of dispatch on a few KB of data) as in its weight matmuls once those are
quantized. `FusedDecodeStep` runs the same math with one C call per norm, attention and SiLU,
and calls the model's own projection modules (float, int8 or int4: whatever quantization put
there) for the matmuls. Anything else (prefill, other dtypes or devices) goes to
`Decoder.forward` unchanged.
"""

from __future__ import annotations

import torch

from ...models.dia1 import CrossState, Decoder
from ...models.layers import Rope, merge_heads, split_heads
from . import kernels as cpu_kernels


def supported(decoder: Decoder, device: torch.device, dtype: torch.dtype) -> bool:
    """True when `FusedDecodeStep` can serve this decoder (CPU, float32, kernels built)."""
    if device.type != "cpu" or dtype != torch.float32 or not cpu_kernels.available():
        return False
    layer = decoder.layers[0]
    return layer.self_attn.head_dim % 2 == 0 and layer.self_attn.n_head % layer.self_attn.n_kv_head == 0 \
        and layer.cross_attn.n_head % layer.cross_attn.n_kv_head == 0


class FusedDecodeStep:
    """Callable with `Decoder.forward`'s signature; single-position calls take the fused path."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.lib = cpu_kernels._library()
        # A quantized decoder keeps its cross-attention K/V in float16: half their memory (86 MB
        # for a 145-byte script at 1.6B size, 18 layers x 2 CFG rows), an error (2^-11
        # relative) far below its weights' own, read at the same speed.
        self.cross_dtype = torch.float16 if _quantized(decoder) else None

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache, cross: CrossState,
                 kv_len: int | None = None, compute_logits: bool = True) -> torch.Tensor | None:
        dec = self.decoder
        b, length, _ = tokens.shape
        if length != 1 or cache.k[0].dtype != torch.float32 or not compute_logits:
            return dec(tokens, positions, cache, cross, kv_len=kv_len, compute_logits=compute_logits)
        lib, ptr, nthreads = self.lib, torch.Tensor.data_ptr, torch.get_num_threads()
        total = cache.k[0].shape[2]
        pos = positions[:, 0].contiguous()
        # The C code writes cache slot `pos` unchecked: refuse anything outside the cache.
        if int(pos.min()) < 0 or int(pos.max()) >= total:
            raise ValueError(f"decode positions must lie in 0..{total - 1}")
        x = dec.embed(tokens).view(b, -1).contiguous()  # (B, E) float32, updated in place
        width = x.shape[1]
        h = torch.empty_like(x)
        cos, sin = (t.contiguous() for t in dec.rope.tables(positions))  # (B, 1, 1, D/2)
        if dec.cross_attn_rope:
            cross_cos, cross_sin = dec.cross_rope.tables(positions)
        keep = cross.allowed.reshape(b, -1).contiguous()  # (B, S) bool
        half = int(cross.k[0].dtype == torch.float16)
        s_len = keep.shape[1]

        first = dec.layers[0]
        sa0, ca0 = first.self_attn, first.cross_attn
        hq, hkv, d = sa0.n_head, sa0.n_kv_head, sa0.head_dim
        chq, chkv, cd = ca0.n_head, ca0.n_kv_head, ca0.head_dim
        attn = torch.empty((b, hq * d))
        cattn = torch.empty((b, chq * cd))
        hidden = torch.empty((b, first.mlp.hidden))
        scratch = torch.empty(max(b * hq * (total + d), b * chq * s_len))
        iscratch = torch.empty(b * max(hkv * total, chkv * s_len), dtype=torch.int32)
        eps = float(first.pre_sa_norm.eps)

        delta = None
        for i, layer in enumerate(dec.layers):
            lib.fd_add_rmsnorm(ptr(x), _p(delta), ptr(layer.pre_sa_norm.weight), eps, b, width, ptr(h))
            qkv = layer.self_attn.qkv(h).contiguous()
            lib.fd_self_attn(ptr(qkv), ptr(cos), ptr(sin), ptr(cache.k[i]), ptr(cache.v[i]), ptr(pos),
                             b, hq, hkv, d, total, ptr(attn), ptr(scratch), ptr(iscratch), nthreads)
            delta = layer.self_attn.o(attn).contiguous()

            lib.fd_add_rmsnorm(ptr(x), ptr(delta), ptr(layer.pre_ca_norm.weight), eps, b, width, ptr(h))
            q = layer.cross_attn.q(h)
            if dec.cross_attn_rope:
                q = merge_heads(Rope.apply(split_heads(q.view(b, 1, -1), chq), cross_cos, cross_sin)).view(b, -1)
            q = q.contiguous()
            lib.fd_cross_attn(ptr(q), ptr(cross.k[i]), ptr(cross.v[i]), half, ptr(keep), b, chq, chkv, cd, s_len,
                              ptr(cattn), ptr(scratch), ptr(iscratch), nthreads)
            delta = layer.cross_attn.o(cattn).contiguous()

            lib.fd_add_rmsnorm(ptr(x), ptr(delta), ptr(layer.pre_mlp_norm.weight), eps, b, width, ptr(h))
            gate_up = layer.mlp.gate_up(h).contiguous()
            lib.fd_silu_mul(ptr(gate_up), b, layer.mlp.hidden, ptr(hidden))
            delta = layer.mlp.down(hidden).contiguous()
        lib.fd_add_rmsnorm(ptr(x), ptr(delta), ptr(dec.norm.weight), float(dec.norm.eps), b, width, ptr(h))
        logits = dec.head(h)
        return logits.view(b, 1, dec.n_channels, dec.vocab).float()


def _quantized(decoder: Decoder) -> bool:
    from ...quant.modules import Int4Linear, Int8Linear

    return any(isinstance(m, (Int8Linear, Int4Linear)) for m in decoder.modules())


def _p(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def decode_step(decoder: Decoder, device: torch.device, dtype: torch.dtype):
    """The fastest available callable with `Decoder.forward`'s signature for this setup."""
    if not isinstance(decoder, Decoder):  # a step of its own (fastdia.onnx.runtime): used as it is
        return decoder
    return FusedDecodeStep(decoder) if supported(decoder, device, dtype) else decoder
