"""Dia-1 encoder-decoder (spec section 1), pure math: tensors and positions in, tensors out.

No loading, sampling or device logic lives here. The decoder reads and writes a static,
preallocated KV cache by index (any object with per-layer `k`/`v` lists of `(B, Hkv, T, D)`
tensors, see fastdia.nn.cache), so one forward serves prefill, single-step decode,
compiled and CUDA-graph runs alike. Every row carries its own positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import DiaConfig, EncoderConfig
from ..nn.layers import Embedding, GatedMLP, RMSNorm, Rope, attention, merge_heads, split_heads


class SelfAttention(nn.Module):
    """RoPE self-attention with fused QKV; bidirectional (encoder) or cached causal (decoder)."""

    def __init__(self, dim: int, n_head: int, n_kv_head: int, head_dim: int) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim
        self.qkv = nn.Linear(dim, (n_head + 2 * n_kv_head) * head_dim, bias=False)
        self.o = nn.Linear(n_head * head_dim, dim, bias=False)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """`(B, L, E)` -> rotated q `(B, Hq, L, D)`, rotated k and v `(B, Hkv, L, D)`."""
        q_width, kv_width = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        q, k, v = self.qkv(x).split((q_width, kv_width, kv_width), dim=-1)
        q = Rope.apply(split_heads(q, self.n_head), cos, sin)
        k = Rope.apply(split_heads(k, self.n_kv_head), cos, sin)
        return q, k, split_heads(v, self.n_kv_head)


class CrossAttention(nn.Module):
    """Decoder-to-text attention; K/V are projected once per utterance (`project_kv`)."""

    def __init__(self, dim: int, enc_dim: int, n_head: int, n_kv_head: int, head_dim: int) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim
        self.q = nn.Linear(dim, n_head * head_dim, bias=False)
        self.kv = nn.Linear(enc_dim, 2 * n_kv_head * head_dim, bias=False)
        self.o = nn.Linear(n_head * head_dim, dim, bias=False)

    def project_kv(self, enc_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(enc_out).chunk(2, dim=-1)
        return split_heads(k, self.n_kv_head), split_heads(v, self.n_kv_head)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig, eps: float) -> None:
        super().__init__()
        self.pre_sa_norm = RMSNorm(cfg.d_model, eps)
        self.attn = SelfAttention(cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.head_dim)
        # Named after the checkpoint; it is a pre-norm for the MLP.
        self.post_sa_norm = RMSNorm(cfg.d_model, eps)
        self.mlp = GatedMLP(cfg.d_model, cfg.d_ff)

    def forward(self, x, cos, sin, allowed):
        q, k, v = self.attn.project(self.pre_sa_norm(x), cos, sin)
        x = x + self.attn.o(merge_heads(attention(q, k, v, allowed)))
        return x + self.mlp(self.post_sa_norm(x))


class Encoder(nn.Module):
    def __init__(self, cfg: DiaConfig) -> None:
        super().__init__()
        e = cfg.encoder
        self.embedding = Embedding(e.vocab_size, e.d_model)
        self.layers = nn.ModuleList(EncoderLayer(e, cfg.norm_eps) for _ in range(e.n_layer))
        self.norm = RMSNorm(e.d_model, cfg.norm_eps)
        self.rope = Rope(e.head_dim, cfg.rope_theta, cfg.rope_min_timescale)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode text.

        Args:
            tokens: `(B, S)` byte ids (the unconditional CFG row is all zeros).
            mask: `(B, S)` bool, True at real (non-pad) text positions. The unconditional row
                uses its conditional partner's mask (spec 1.7), never one derived from its zeros.

        Returns:
            `(B, S, E)` encoder states; values at pad positions are meaningless.
        """
        b, s = tokens.shape
        positions = torch.arange(s, device=tokens.device).expand(b, s)
        cos, sin = self.rope.tables(positions)
        allowed = mask[:, None, None, :]  # (B, 1, 1, S): mask pad keys only
        x = self.embedding(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, allowed)
        return self.norm(x)


@dataclass
class CrossState:
    """Per-utterance cross-attention inputs, computed once before decoding."""

    k: list[torch.Tensor]  # per layer (B, Hkv, S, D), RoPE'd for v0.1 weights
    v: list[torch.Tensor]  # per layer (B, Hkv, S, D)
    allowed: torch.Tensor  # (B, 1, 1, S) bool: real text keys


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DiaConfig) -> None:
        super().__init__()
        d, eps = cfg.decoder, cfg.norm_eps
        self.pre_sa_norm = RMSNorm(d.d_model, eps)
        self.self_attn = SelfAttention(d.d_model, d.n_head, d.n_kv_head, d.head_dim)
        self.pre_ca_norm = RMSNorm(d.d_model, eps)
        self.cross_attn = CrossAttention(
            d.d_model, cfg.encoder.d_model, d.cross_n_head, d.cross_n_kv_head, d.cross_head_dim
        )
        self.pre_mlp_norm = RMSNorm(d.d_model, eps)
        self.mlp = GatedMLP(d.d_model, d.d_ff)


class Decoder(nn.Module):
    def __init__(self, cfg: DiaConfig) -> None:
        super().__init__()
        d = cfg.decoder
        self.n_channels, self.vocab = d.n_channels, d.vocab_size
        self.cross_attn_rope = cfg.cross_attn_rope
        # One table for all channels: row c * V + token (the transformers layout).
        self.embedding = Embedding(d.n_channels * d.vocab_size, d.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(d.n_layer))
        self.norm = RMSNorm(d.d_model, cfg.norm_eps)
        self.head = nn.Linear(d.d_model, d.n_channels * d.vocab_size, bias=False)
        self.rope = Rope(d.head_dim, cfg.rope_theta, cfg.rope_min_timescale)
        self.cross_rope = Rope(d.cross_head_dim, cfg.rope_theta, cfg.rope_min_timescale)

    def cross_state(self, enc_out: torch.Tensor, text_mask: torch.Tensor,
                    dtype: torch.dtype | None = None) -> CrossState:
        """Project the encoder output to every layer's cross-attention K/V, once per utterance.

        Args:
            enc_out: `(B, S, E_enc)`.
            text_mask: `(B, S)` bool, True at real text positions.
            dtype: store K/V in this dtype (default `enc_out`'s); attention computes in the
                query's dtype either way.
        """
        if self.cross_attn_rope:
            b, s = text_mask.shape
            positions = torch.arange(s, device=enc_out.device).expand(b, s)
            cos, sin = self.cross_rope.tables(positions)
        kv = None  # (2, layers, B, Hkv, S, D): one block, so layers' temporaries reuse one space
        for i, layer in enumerate(self.layers):
            k, v = layer.cross_attn.project_kv(enc_out)
            if self.cross_attn_rope:
                k = Rope.apply(k, cos, sin)
            if kv is None:
                kv = torch.empty((2, len(self.layers), *k.shape), dtype=dtype or k.dtype, device=k.device)
            # Contiguous once here, not a strided copy inside every decode step's attention.
            kv[0, i].copy_(k)
            kv[1, i].copy_(v)
        return CrossState(list(kv[0].unbind(0)), list(kv[1].unbind(0)), text_mask[:, None, None, :])

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Sum of the nine channel embeddings: `(B, L, C)` -> `(B, L, E)`."""
        offsets = torch.arange(self.n_channels, device=tokens.device) * self.vocab
        return self.embedding(tokens + offsets).sum(dim=2)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache,
        cross: CrossState,
        kv_len: int | None = None,
        compute_logits: bool = True,
    ) -> torch.Tensor | None:
        """Run the decoder over `L` new frames per row, writing their K/V into `cache`.

        Args:
            tokens: `(B, L, C)` delayed audio tokens (never the -1 "unknown" marker).
            positions: `(B, L)` absolute frame positions; cache slot = position.
            cache: static self-attention cache with per-layer `k[i]`, `v[i]` of `(B, Hkv, T, D)`.
            cross: from `cross_state`.
            kv_len: attend only to cache slots `< kv_len` (a host int, so eager runs skip the
                unwritten tail); None means the whole cache (static shapes for CUDA graphs).
            compute_logits: False skips the output head (prefill whose logits are discarded).

        Returns:
            `(B, L, C, V)` float32 logits, or None.
        """
        b, length, _ = tokens.shape
        x = self.embed(tokens)
        cos, sin = self.rope.tables(positions)
        if self.cross_attn_rope:
            cross_cos, cross_sin = self.cross_rope.tables(positions)
        total = cache.k[0].shape[2]
        span = total if kv_len is None else kv_len
        slots = torch.arange(span, device=tokens.device)
        # Causal over absolute positions: key slot s is visible to the query at p iff s <= p.
        allowed = (slots <= positions[:, :, None]).unsqueeze(1)  # (B, 1, L, span)
        rows = torch.arange(b, device=tokens.device)[:, None]  # (B, 1)
        for i, layer in enumerate(self.layers):
            sa = layer.self_attn
            q, k, v = sa.project(layer.pre_sa_norm(x), cos, sin)
            # Write by index (no concatenation, no reallocation): cache[row, :, pos] = new.
            cache.k[i][rows, :, positions] = k.transpose(1, 2)
            cache.v[i][rows, :, positions] = v.transpose(1, 2)
            ck, cv = cache.k[i][:, :, :span], cache.v[i][:, :, :span]
            x = x + sa.o(merge_heads(attention(q, ck, cv, allowed)))

            ca = layer.cross_attn
            q = split_heads(ca.q(layer.pre_ca_norm(x)), ca.n_head)
            if self.cross_attn_rope:
                q = Rope.apply(q, cross_cos, cross_sin)
            k, v = cross.k[i].to(q.dtype), cross.v[i].to(q.dtype)  # no-ops unless stored narrower
            x = x + ca.o(merge_heads(attention(q, k, v, cross.allowed)))

            x = x + layer.mlp(layer.pre_mlp_norm(x))
        if not compute_logits:
            return None
        logits = self.head(self.norm(x))  # (B, L, C*V), channel-major
        return logits.view(b, length, self.n_channels, self.vocab).float()


class DiaModel(nn.Module):
    """Dia-1 encoder + decoder. Loading lives in fastdia.weights, generation in fastdia.generation."""

    def __init__(self, cfg: DiaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
