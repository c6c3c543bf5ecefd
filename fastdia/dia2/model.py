"""Dia2 step decoder + depformer (spec dia2 section 3), pure math: tensors and positions in, tensors out.

No loading, sampling, CFG or state machine lives here. Both transformers read and write static,
preallocated KV caches by index (`Dia2KVCache`), so one forward serves prefill, single-step decode,
compiled and CUDA-graph runs alike. CFG rows are ordinary batch rows; every row carries its own
RoPE positions and cache slots (they differ after a voice prefix, spec 5.3 / pitfall 13).

Parameter names equal the checkpoint keys of spec 3.8 one to one (`transformer.*` is the decoder,
`depformer.*` the depformer; per-group depformer weights live in `ModuleDict`s keyed by the decimal
group id), so a checkpoint loads with `load_state_dict(strict=True)` and no renaming.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import Dia2Config
from ..nn.layers import Embedding, RMSNorm, Rope, attention, merge_heads, split_heads, zeroed

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "swiglu": F.silu,
    "gelu": F.gelu,  # exact (erf) GELU, as the reference
    "geglu": F.gelu,
    "relu": F.relu,
    "linear": lambda x: x,
}


class Dia2Rope:
    """Half-split rotary embedding with the reference's arithmetic (spec 3.4).

    inv_freq_i = 1 / (min * (max/min)^(2i/hd)), angle = p * inv_freq_i, all in float32. Computed on
    the fly from integer positions, so there is no table to index past (pitfall 3).
    """

    def __init__(self, head_dim: int, min_timescale: float, max_timescale: float) -> None:
        fraction = torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim
        timescale = min_timescale * (max_timescale / min_timescale) ** fraction
        self._inv_freq = 1.0 / timescale  # (hd/2,)
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer positions `(B, L)` -> cos, sin `(B, 1, L, hd/2)` float32 (for `Rope.apply`)."""
        inv = self._on_device.get(positions.device)
        if inv is None:
            inv = self._on_device[positions.device] = self._inv_freq.to(positions.device)
        angle = positions.to(torch.float32).unsqueeze(-1) * inv  # (B, L, hd/2)
        return angle.cos().unsqueeze(1), angle.sin().unsqueeze(1)


class Dia2GatedMLP(nn.Module):
    """`wo(act0(gate) * act1(up))`; `wi` rows are [gate ; up] (spec 3.3, pitfall 6)."""

    def __init__(self, dim: int, hidden: int, activations: tuple[str, str]) -> None:
        super().__init__()
        self.hidden = hidden
        self.act_gate, self.act_up = (_ACTIVATIONS[a] for a in activations)
        self.wi = nn.Linear(dim, 2 * hidden, bias=False)
        self.wo = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.wi(x).split(self.hidden, dim=-1)
        return self.wo(self.act_gate(gate) * self.act_up(up))


class MultiStreamTextEmbedding(nn.Module):
    """`main_proj(E[main]) + second_proj(E[second])`, the second term only where second != pad (3.2)."""

    def __init__(self, vocab: int, table_dim: int, dim: int, pad_id: int) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embedding = Embedding(vocab, table_dim)
        self.main_proj = nn.Linear(table_dim, dim, bias=False)
        self.second_proj = nn.Linear(table_dim, dim, bias=False)

    def forward(self, main: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """`(B, L)` text ids of both streams -> `(B, L, D)`."""
        out = self.main_proj(self.embedding(main))
        extra = self.second_proj(self.embedding(second))
        return out + torch.where((second != self.pad_id).unsqueeze(-1), extra, torch.zeros_like(extra))


class Dia2KVCache:
    """Static per-layer K and V tensors `(rows, H_kv, slots, hd)`, written by index, never resized.

    The decoder cache has one slot per step; the depformer cache has one slot per stage and needs
    no reset between frames: stage s writes slot s and reads slots 0..s only.
    """

    def __init__(self, n_layer: int, rows: int, n_kv_head: int, slots: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        kv = zeroed(2 * n_layer, (rows, n_kv_head, slots, head_dim), dtype, device)
        self.k, self.v = kv[:n_layer], kv[n_layer:]

    @property
    def slots(self) -> int:
        return self.k[0].shape[2]


def _qk_norm_rope(q, k, q_norm, k_norm, cos, sin, rope: bool):
    """Per-head RMSNorm over hd on `(B, H, L, hd)` q and k, then RoPE (QK-norm comes first)."""
    q, k = q_norm(q), k_norm(k)
    if rope:
        q, k = Rope.apply(q, cos, sin), Rope.apply(k, cos, sin)
    return q, k


# Decoder


class DecoderAttention(nn.Module):
    def __init__(self, dim: int, n_head: int, n_kv_head: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.q_proj = nn.Linear(dim, n_head * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, n_kv_head * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_kv_head * head_dim, bias=False)
        self.o_proj = nn.Linear(n_head * head_dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)

    def forward(self, x, cos, sin, k_cache, v_cache, rows, slots, allowed, span):
        q = split_heads(self.q_proj(x), self.n_head)  # (B, Hq, L, hd)
        k = split_heads(self.k_proj(x), self.n_kv_head)  # (B, Hkv, L, hd)
        v = split_heads(self.v_proj(x), self.n_kv_head)
        q, k = _qk_norm_rope(q, k, self.q_norm, self.k_norm, cos, sin, True)
        # Write by index: cache[row, :, slot] = new (no concatenation, no reallocation).
        k_cache[rows, :, slots] = k.transpose(1, 2).to(k_cache.dtype)
        v_cache[rows, :, slots] = v.transpose(1, 2).to(v_cache.dtype)
        ck, cv = k_cache[:, :, :span].to(q.dtype), v_cache[:, :, :span].to(q.dtype)
        return self.o_proj(merge_heads(attention(q, ck, cv, allowed)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Dia2Config) -> None:
        super().__init__()
        d, eps = cfg.decoder, cfg.norm_eps
        self.pre_norm = RMSNorm(d.d_model, eps)
        self.attn = DecoderAttention(d.d_model, d.n_head, d.n_kv_head, d.head_dim, eps)
        self.post_norm = RMSNorm(d.d_model, eps)
        self.mlp = Dia2GatedMLP(d.d_model, d.d_ff, d.mlp_activations)


@dataclass
class DecoderOutput:
    hidden: torch.Tensor  # (B, L, D) after the final norm: what the heads and the depformer read
    action_logits: torch.Tensor  # (B, L, action_vocab) float32; index 0 = pad, 1 = new word
    cb0_logits: torch.Tensor  # (B, L, audio_vocab) float32, codebook 0 of the next delayed frame


class Dia2Decoder(nn.Module):
    """Checkpoint prefix `transformer.`: multi-stream text + C audio embeddings, L layers, 2 heads."""

    def __init__(self, cfg: Dia2Config) -> None:
        super().__init__()
        d, data = cfg.decoder, cfg.data
        self.n_codebooks = data.n_codebooks
        self.audio_embeds = nn.ModuleList(
            Embedding(data.audio_vocab_size, d.d_model) for _ in range(data.n_codebooks)
        )
        self.text_embed = MultiStreamTextEmbedding(
            data.text_vocab_size, d.text_embed_dim, d.d_model, data.text_pad_token_id
        )
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(d.n_layer))
        self.norm = RMSNorm(d.d_model, cfg.norm_eps)
        self.action_head = nn.Linear(d.d_model, data.action_vocab_size, bias=False)
        self.cb0_head = nn.Linear(d.d_model, data.audio_vocab_size, bias=False)
        self.rope = Dia2Rope(d.head_dim, cfg.rope_min_timescale, cfg.rope_max_timescale)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(B, L, C+2)` step inputs -> `(B, L, D)`: text embedding, then codebooks 0..C-1 added in order."""
        x = self.text_embed(tokens[..., 0], tokens[..., 1])
        for c, table in enumerate(self.audio_embeds):
            x = x + table(tokens[..., 2 + c])
        return x

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: Dia2KVCache,
        slots: torch.Tensor | None = None,
        kv_len: int | None = None,
    ) -> DecoderOutput:
        """Run `L` steps per row, writing their K/V into `cache`.

        Args:
            tokens: `(B, L, C+2)` step inputs (channel 0 main text, 1 second text, 2+c codebook c).
            positions: `(B, L)` RoPE positions (the step index t).
            cache: from `Dia2Model.new_decoder_cache`.
            slots: `(B, L)` cache slots to write; default = positions. A query at slot j attends
                to slots 0..j (the reference's `length` counter), whatever their positions.
            kv_len: attend only to slots `< kv_len` (a host int, so eager runs skip the unwritten
                tail); None means all slots (static shapes for CUDA graphs).
        """
        slots = positions if slots is None else slots
        b = tokens.shape[0]
        x = self.embed(tokens)
        cos, sin = self.rope.tables(positions)
        span = cache.slots if kv_len is None else kv_len
        keys = torch.arange(span, device=tokens.device)
        allowed = (keys <= slots[:, :, None]).unsqueeze(1)  # (B, 1, L, span)
        rows = torch.arange(b, device=tokens.device)[:, None]  # (B, 1)
        for i, layer in enumerate(self.layers):
            x = x + layer.attn(layer.pre_norm(x), cos, sin, cache.k[i], cache.v[i], rows, slots, allowed, span)
            x = x + layer.mlp(layer.post_norm(x))
        hidden = self.norm(x)
        return DecoderOutput(hidden, self.action_head(hidden).float(), self.cb0_head(hidden).float())


# Depformer


class ScheduleAttention(nn.Module):
    """Depformer attention: fused q/k/v and output projections per weight group, shared QK norms."""

    def __init__(self, dim: int, n_head: int, head_dim: int, groups: tuple[int, ...], eps: float) -> None:
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        width = n_head * head_dim
        self.in_proj = nn.ModuleDict({str(g): nn.Linear(dim, 3 * width, bias=False) for g in groups})
        self.out_proj = nn.ModuleDict({str(g): nn.Linear(width, dim, bias=False) for g in groups})
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)

    def forward(self, x, group: str, stage: int, cos, sin, rope: bool, k_cache, v_cache, allowed):
        b = x.shape[0]
        # Rows are [q ; k ; v], each head-major (pitfall 6): view (B, 3, H, hd).
        qkv = self.in_proj[group](x).view(b, 3, self.n_head, self.head_dim)
        q, k, v = (t.unsqueeze(2) for t in qkv.unbind(1))  # (B, H, 1, hd)
        q, k = _qk_norm_rope(q, k, self.q_norm, self.k_norm, cos, sin, rope)
        k_cache[:, :, stage] = k[:, :, 0].to(k_cache.dtype)
        v_cache[:, :, stage] = v[:, :, 0].to(v_cache.dtype)
        out = attention(q, k_cache.to(q.dtype), v_cache.to(q.dtype), allowed)  # (B, H, 1, hd)
        return self.out_proj[group](out.reshape(b, self.n_head * self.head_dim))


class DepformerLayer(nn.Module):
    def __init__(self, cfg: Dia2Config) -> None:
        super().__init__()
        d, eps = cfg.depformer, cfg.norm_eps
        self.pre_norm = RMSNorm(d.d_model, eps)
        self.self_attention = ScheduleAttention(d.d_model, d.n_head, d.head_dim, cfg.runtime.weight_groups, eps)
        self.post_norm = RMSNorm(d.d_model, eps)
        self.mlp = Dia2GatedMLP(d.d_model, d.d_ff, d.mlp_activations)


class Dia2Depformer(nn.Module):
    """Checkpoint prefix `depformer.`: S = C-1 stages per frame predicting codebooks 1..C-1 (spec 3.6).

    Per stage: input embedding table and output head. Per weight group (`weights_schedule[s]`):
    `depformer_in` and the attention projections. Shared: QK norms, layer norms, MLPs, final norm.
    """

    def __init__(self, cfg: Dia2Config) -> None:
        super().__init__()
        d, data = cfg.depformer, cfg.data
        self.n_stages = cfg.n_stages
        self.schedule = tuple(str(g) for g in cfg.runtime.weights_schedule)
        self.codebook_size = data.codebook_size
        self.apply_rope = d.apply_rope
        self.audio_embeds = nn.ModuleList(Embedding(data.audio_vocab_size, d.d_model) for _ in range(self.n_stages))
        self.text_embed = (
            MultiStreamTextEmbedding(data.text_vocab_size, d.d_model, d.d_model, data.text_pad_token_id)
            if d.text_embedding else None
        )
        self.depformer_in = nn.ModuleDict(
            {str(g): nn.Linear(cfg.decoder.d_model, d.d_model, bias=False) for g in cfg.runtime.weight_groups}
        )
        self.layers = nn.ModuleList(DepformerLayer(cfg) for _ in range(d.n_layer))
        self.norm = RMSNorm(d.d_model, cfg.norm_eps)
        self.logits = nn.ModuleList(
            nn.Linear(d.d_model, data.audio_vocab_size, bias=False) for _ in range(self.n_stages)
        )
        self.rope = Dia2Rope(d.head_dim, cfg.rope_min_timescale, cfg.rope_max_timescale)

    def stage(
        self,
        s: int,
        hidden: torch.Tensor,
        prev_token: torch.Tensor,
        cache: Dia2KVCache,
        text: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Run stage `s` (a host int: it selects weights, like one CUDA graph per stage).

        Args:
            hidden: `(B, D)` decoder output after its final norm, one per row.
            prev_token: `(B,)` token of codebook `s` of this frame (s = 0: the cb0 sample).
            cache: from `Dia2Model.new_depformer_cache`; stage s writes slot s, reads slots 0..s.
            text: `(main, second)` `(B,)` ids for stage 0 when `depformer.text_embedding` is on
                (the reference gives the conditional row's text to both CFG rows).

        Returns:
            `(B, codebook_size)` float32 logits of codebook s+1, already cut to the codec ids (2048).
        """
        group = self.schedule[s]
        x = self.depformer_in[group](hidden) + self.audio_embeds[s](prev_token)  # (B, Dd)
        if s == 0 and self.text_embed is not None:
            if text is None:
                raise ValueError("this depformer has a text embedding: stage 0 needs text=(main, second)")
            x = x + self.text_embed(text[0][:, None], text[1][:, None])[:, 0]
        b = x.shape[0]
        positions = torch.full((b, 1), s, dtype=torch.long, device=x.device)
        cos, sin = self.rope.tables(positions)
        allowed = (torch.arange(cache.slots, device=x.device) <= s).view(1, 1, 1, -1)
        for i, layer in enumerate(self.layers):
            x = x + layer.self_attention(
                layer.pre_norm(x), group, s, cos, sin, self.apply_rope, cache.k[i], cache.v[i], allowed
            )
            x = x + layer.mlp(layer.post_norm(x))
        return self.logits[s](self.norm(x))[:, : self.codebook_size].float()

    def forward(
        self,
        hidden: torch.Tensor,
        tokens: torch.Tensor,
        cache: Dia2KVCache,
        text: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Teacher-forced frame: all S stages given the known tokens of codebooks 0..S-1.

        Args:
            hidden: `(B, D)`; tokens: `(B, S)`, column s = the token fed to stage s.

        Returns:
            `(B, S, codebook_size)` float32 logits (stage s predicts codebook s+1).
        """
        return torch.stack(
            [self.stage(s, hidden, tokens[:, s], cache, text) for s in range(self.n_stages)], dim=1
        )


class Dia2Model(nn.Module):
    """Dia2 decoder (`transformer`) + depformer. Loading: fastdia.dia2.checkpoint."""

    def __init__(self, cfg: Dia2Config) -> None:
        super().__init__()
        self.config = cfg
        self.transformer = Dia2Decoder(cfg)
        self.depformer = Dia2Depformer(cfg)

    def new_decoder_cache(self, rows: int, slots: int, device=None, dtype: torch.dtype | None = None) -> Dia2KVCache:
        d = self.config.decoder
        ref = self.transformer.norm.weight
        return Dia2KVCache(d.n_layer, rows, d.n_kv_head, slots, d.head_dim,
                           device or ref.device, dtype or self._compute_dtype())

    def new_depformer_cache(self, rows: int, device=None, dtype: torch.dtype | None = None) -> Dia2KVCache:
        d = self.config.depformer
        ref = self.depformer.norm.weight
        return Dia2KVCache(d.n_layer, rows, d.n_kv_head, self.config.n_stages, d.head_dim,
                           device or ref.device, dtype or self._compute_dtype())

    def _compute_dtype(self) -> torch.dtype:
        return self.transformer.cb0_head.weight.dtype
