"""Pure-math building blocks shared by the models: RMSNorm, RoPE, attention, gated MLP.

Shape convention in this package: `B` rows (CFG rows count separately), `L` query positions,
`S` key positions, `H` heads, `D` head dim, `E` model width. Tensors are annotated `# (B, H, L, D)`.

Projections are plain `nn.Linear(bias=False)` with `[out, in]` weights, so that quantization can
swap them for another module from the outside (fastdia.quant.modules) without this file knowing.
"""

from __future__ import annotations

import math
import mmap

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 with a float32 gain, cast back to the input dtype.

    The original implementation keeps norm gains in fp32 and normalises in fp32 whatever the
    compute dtype (spec 1.8); doing the same keeps bf16 runs closest to the reference.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One fused op instead of six: the norms were ~5% of a quantized CPU decode step.
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class Embedding(nn.Embedding):
    """`nn.Embedding` that leaves a meta-device table uninitialised.

    Loading builds the model on the meta device and attaches real weights afterwards. torch
    serves `normal_` on meta tensors through its Python decompositions, whose first use imports
    ~800 modules (sympy among them) that then stay resident: 77 MB, 5% of the int4 1.6B model.
    """

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class Rope:
    """Half-split ("rotate half") rotary embedding: dim i pairs with dim i + D/2 (spec 1.5).

    Angles follow the original arithmetic: timescale_i = min * (max/min)^(2i/D), angle = p / timescale,
    all in float32. The rotation is done in float32 and cast back, as the original does.
    """

    def __init__(self, head_dim: int, max_timescale: float, min_timescale: float = 1.0) -> None:
        half = head_dim // 2
        # Explicit CPU: modules are often built under a meta-device context.
        fraction = 2.0 * torch.arange(half, dtype=torch.float32, device="cpu") / head_dim
        self._timescale = min_timescale * (max_timescale / min_timescale) ** fraction  # (D/2,)
        # One copy per device, so a decode step never copies the table host -> device.
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for integer positions `(B, L)` -> two `(B, 1, L, D/2)` float32 tensors."""
        timescale = self._on_device.get(positions.device)
        if timescale is None:
            timescale = self._on_device[positions.device] = self._timescale.to(positions.device)
        angle = positions.to(torch.float32).unsqueeze(-1) / timescale  # (B, L, D/2)
        return angle.cos().unsqueeze(1), angle.sin().unsqueeze(1)

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate `x` `(B, H, L, D)` by the angles in `cos`/`sin` `(B, 1, L, D/2)`."""
        x32 = x.float()
        x1, x2 = x32.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return out.to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Scaled-dot-product attention with Dia's scale of 1.0 and grouped KV heads.

    Args:
        q: `(B, Hq, L, D)` queries.
        k, v: `(B, Hkv, S, D)` keys and values; query head h reads KV head h // (Hq/Hkv).
        allowed: bool mask broadcastable to `(B, Hq, L, S)`; True where a key may be attended.

    Returns:
        `(B, Hq, L, D)`.
    """
    # Dia was trained with unscaled scores (no 1/sqrt(D)): scale=1.0 is essential (spec 1.4).
    if q.shape[2] == 1 and q.device.type == "cpu":
        return _single_query_attention(q, k, v, allowed)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed, scale=1.0, enable_gqa=q.shape[1] != k.shape[1]
    )


def _single_query_attention(q, k, v, allowed):
    """One query per row (a decode step): two small matmuls and a float32 softmax.

    torch's CPU SDPA kernel costs ~0.9 ms per call here whatever the size (measured: 30 ms of
    a 200 ms bfloat16 step across 36 calls), while this is tens of microseconds.
    """
    b, hq, _, d = q.shape
    hkv = k.shape[1]
    qg = q.view(b, hkv, hq // hkv, d)  # query head h reads KV head h // group (spec 1.4)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float()  # (B, Hkv, G, S)
    scores = scores.masked_fill(~allowed.view(allowed.shape[0], 1, 1, -1), float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype)
    return torch.matmul(probs, v).view(b, hq, 1, d)


class GatedMLP(nn.Module):
    """`down(silu(gate(x)) * up(x))` with gate and up fused into one `[2F, E]` projection."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)
        return self.down(F.silu(gate) * up)


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """`(B, L, H*D)` -> `(B, H, L, D)`."""
    b, length, width = x.shape
    return x.view(b, length, n_head, width // n_head).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """`(B, H, L, D)` -> `(B, L, H*D)`."""
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


def zeroed(n: int, shape: tuple[int, ...], dtype: torch.dtype, device) -> list[torch.Tensor]:
    """`n` zero tensors of `shape`, for static caches.

    On CPU they are views of one anonymous mapping: the OS maps zero pages as they are first
    written, so a cache sized for the longest script costs memory and time only for the slots a
    run writes. torch.zeros writes every byte: a Dia2-2B decoder cache of 1,500 steps is 0.69 GB,
    and zeroing it took 0.3-1.3 s before the first step on 2 Zen 4 vCPUs. Huge pages are turned
    off for the mapping: a cache's heads are strided across it, so the first step would fault in
    (and zero) a 2 MB page for every head of every layer, nearly all of it (measured: the same
    1.2 s, moved into the first step, with numpy's zeros, which asks for huge pages).
    """
    size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if torch.device(device).type != "cpu" or n * size == 0:
        return [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)]
    buf = mmap.mmap(-1, n * size)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    block = torch.frombuffer(buf, dtype=torch.uint8).view(dtype).view(n, *shape)  # keeps `buf` alive
    return list(block.unbind(0))
