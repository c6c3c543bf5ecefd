"""The torch modules that are exported as ONNX graphs: thin adapters around fastdia's own model.

Each adapter reuses the model's modules (norms, projections, RoPE, MLP) and changes only what a
graph boundary needs:

* `EncoderGraph`: text -> every decoder layer's cross-attention K/V, so the decoder graph takes
  them as inputs and never recomputes (or re-emits) them.
* `DecoderGraph`: L new frames per row -> logits and the new frames' self-attention K/V. The
  cache comes in read-only; the driver writes the returned K/V at `positions` (the write
  position), which keeps every output small and lets a runtime keep its cache in place
  (the layout Qualcomm's static LLM exports use). Attention reads the cache and the new K/V
  as two score blocks joined before the softmax, so the graph never copies the cache.
* `CodecGraph`: DAC codes -> waveform (weight norm already folded by the loader; Snake is
  plain Mul/Sin/Pow/Add ops).

K/V travel as one tensor per layer, not one stacked tensor: slicing a stacked input copies in
onnxruntime, and the cross K/V alone are ~120 MB per step at full size.
"""

from __future__ import annotations

import torch
from torch import nn

from ...dia1.model import DiaModel
from ...nn.layers import Rope, merge_heads, split_heads
from .common import grouped_scores, softmax_f32, ungroup


class EncoderGraph(nn.Module):
    """`(text (B, S) int64, text_mask (B, S) bool)` -> cross_k_i, cross_v_i `(B, Hc, S, Dc)` per layer."""

    def __init__(self, model: DiaModel) -> None:
        super().__init__()
        self.encoder, self.decoder = model.encoder, model.decoder

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor):
        enc = self.encoder(text, text_mask)
        dec = self.decoder
        if dec.cross_attn_rope:  # v0.1 weights: keys rotated by their text position (spec 9)
            b, s = text.shape
            positions = torch.arange(s, device=text.device).expand(b, s)
            cos, sin = dec.cross_rope.tables(positions)
        ks, vs = [], []
        for layer in dec.layers:
            k, v = layer.cross_attn.project_kv(enc)
            if dec.cross_attn_rope:
                k = Rope.apply(k, cos, sin)
            ks.append(k.contiguous())
            vs.append(v.contiguous())
        return (*ks, *vs)


class DecoderGraph(nn.Module):
    """One decoder call over L new frames per row, the self-attention cache read-only.

    Inputs: tokens `(B, L, C)` int64 (delayed grid, never -1), positions `(B, L)` int64 (the
    frames' absolute positions = their cache slots), text_mask `(B, S)` bool, cross_k/v per layer
    `(B, Hc, S, Dc)`, cache_k/v per layer `(B, Hkv, T, D)`.
    Outputs: logits `(B, L, C, V)` float32, new_k/new_v per layer `(B, Hkv, L, D)`.

    Visibility: cache slot s is visible to a row iff s < positions[row, 0] (slots at or past the
    first new position are stale or unwritten); new frame j is visible to new frame i iff
    positions[j] <= positions[i]. This equals `Decoder.forward` with the cache written first.
    """

    def __init__(self, model: DiaModel) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.n_layer = len(self.decoder.layers)

    def forward(self, tokens, positions, text_mask, cross_k, cross_v, cache_k, cache_v):
        dec = self.decoder
        b, length, _ = tokens.shape
        x = dec.embed(tokens)
        cos, sin = dec.rope.tables(positions)
        if dec.cross_attn_rope:
            cross_cos, cross_sin = dec.cross_rope.tables(positions)
        total = cache_k[0].shape[2]
        slots = torch.arange(total, device=tokens.device)
        seen_cache = (slots[None, None, :] < positions[:, :1, None])  # (B, 1, T)
        seen_new = positions[:, None, :] <= positions[:, :, None]  # (B, L, L)
        cross_seen = text_mask[:, None, None, :]  # (B, 1, 1, S)
        new_k, new_v = [], []
        for i, layer in enumerate(dec.layers):
            sa = layer.self_attn
            q, k, v = sa.project(layer.pre_sa_norm(x), cos, sin)
            new_k.append(k)
            new_v.append(v)
            group = sa.n_head // sa.n_kv_head
            # Masks repeat over the group, which is folded into the query axis (G*L).
            s_cache = grouped_scores(q, cache_k[i])  # (B, Hkv, G*L, T)
            s_new = grouped_scores(q, k)  # (B, Hkv, G*L, L)
            allowed = torch.cat((seen_cache.expand(b, length, total), seen_new), dim=-1)  # (B, L, T+L)
            allowed = allowed.repeat(1, group, 1)[:, None]  # (B, 1, G*L, T+L)
            probs = softmax_f32(torch.cat((s_cache, s_new), dim=-1), allowed).to(q.dtype)
            out = torch.matmul(probs[..., :total], cache_v[i]) + torch.matmul(probs[..., total:], v)
            x = x + sa.o(merge_heads(ungroup(out, sa.n_head)))

            ca = layer.cross_attn
            q = split_heads(ca.q(layer.pre_ca_norm(x)), ca.n_head)
            if dec.cross_attn_rope:
                q = Rope.apply(q, cross_cos, cross_sin)
            probs = softmax_f32(grouped_scores(q, cross_k[i]), cross_seen).to(q.dtype)
            out = torch.matmul(probs, cross_v[i])
            x = x + ca.o(merge_heads(ungroup(out, ca.n_head)))

            x = x + layer.mlp(layer.pre_mlp_norm(x))
        logits = dec.head(dec.norm(x)).view(b, length, dec.n_channels, dec.vocab).float()
        return (logits, *new_k, *new_v)


class CodecGraph(nn.Module):
    """`(codes (B, C, T) int64, lengths (B,) int64)` -> waveform `(B, 1, T * hop)`.

    Codes outside the codebook become 0 (as the reference does). `lengths` (valid frames per
    row) masks what lies past each row's end, so a row padded to a batch's (or a static graph's)
    length decodes exactly as it would alone.
    """

    def __init__(self, dac_model) -> None:
        super().__init__()
        self.model = dac_model
        self.size = dac_model.config.codebook_size

    def forward(self, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        codes = torch.where((codes < 0) | (codes >= self.size), torch.zeros_like(codes), codes)
        wave, _ = self.model.decoder(self.model.quantizer.decode(codes), lengths)
        return wave
