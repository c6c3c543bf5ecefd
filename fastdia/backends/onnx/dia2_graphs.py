"""The Dia2 torch modules exported as ONNX graphs: thin adapters around fastdia's own Dia2 model.

As for Dia-1 (graphs.py), every cache comes in read-only and the graph returns the K/V of what it
computed; the driver writes them at their slots. Attention reads the cache and the new K/V as two
score blocks joined before a float32 softmax, so no graph copies a cache.

* `Dia2DecoderGraph`: L new steps per row -> final hidden, action and codebook-0 logits, and the
  steps' self-attention K/V. RoPE follows `positions`, visibility follows `slots` (they differ
  after a voice prefix's warm-up, spec 5.3).
* `Dia2DepformerGraph`: one depformer stage for the stages of one weight group. Its projections
  (`depformer_in`, the attention's in/out projections) are the group's own constant weights, so
  onnxruntime's quantizers see plain MatMuls; the per-stage input embedding and output head are
  stacked and picked by the `stage` input (a Gather). One graph per weight group, not per stage:
  the 2B's 31 stages share 5 groups; nor one graph for all groups: gathering a whole projection
  by index copies it on every call.
* `Dia2CodecGraph`: Mimi codes -> waveform over a whole sequence (the decoder is causal, so the
  first n frames of any longer decode are the decode of those n frames).
"""

from __future__ import annotations

import torch
from torch import nn

from ...dia2.model import Dia2Model, _qk_norm_rope
from ...nn.layers import merge_heads, split_heads
from .common import grouped_scores, softmax_f32, ungroup


def _two_block_attention(q, k_new, v_new, cache_k, cache_v, allowed, n_head: int) -> torch.Tensor:
    """`q (B, Hq, L, D)` over the cache `(B, Hkv, T, D)` and the new `(B, Hkv, L, D)`; `allowed`
    `(B, L, T + L)` -> `(B, L, Hq * D)`. Dia2 attention is unscaled like Dia-1 (fastdia.nn.layers)."""
    total = cache_k.shape[2]
    group = n_head // cache_k.shape[1]
    scores = torch.cat((grouped_scores(q, cache_k), grouped_scores(q, k_new)), dim=-1)  # (B, Hkv, G*L, T+L)
    # The group is folded into the query axis (G*L), so the mask repeats over it.
    probs = softmax_f32(scores, allowed.repeat(1, group, 1)[:, None]).to(q.dtype)
    out = torch.matmul(probs[..., :total], cache_v) + torch.matmul(probs[..., total:], v_new)
    return merge_heads(ungroup(out, n_head))


class Dia2DecoderGraph(nn.Module):
    """One decoder call over L new steps per row, the self-attention cache read-only.

    Inputs: tokens `(B, L, C+2)` int64 (channel 0 main text, 1 second text, 2+c codebook c),
    positions `(B, L)` int64 (RoPE), slots `(B, L)` int64 (cache slots the steps take),
    cache_k/v per layer `(B, Hkv, T, hd)`.
    Outputs: hidden `(B, L, D)`, action_logits `(B, L, A)` and cb0_logits `(B, L, V)` float32,
    new_k/new_v per layer `(B, Hkv, L, hd)`.

    Visibility equals `Dia2Decoder.forward` with the cache written first: cache slot s is seen
    iff s < slots[row, 0] (slots from the first new one on are stale or unwritten), new step j
    by new step i iff slots[j] <= slots[i].
    """

    def __init__(self, model: Dia2Model) -> None:
        super().__init__()
        self.decoder = model.transformer

    def forward(self, tokens, positions, slots, cache_k, cache_v):
        dec = self.decoder
        b, length, _ = tokens.shape
        x = dec.embed(tokens)
        cos, sin = dec.rope.tables(positions)
        total = cache_k[0].shape[2]
        keys = torch.arange(total, device=tokens.device)
        seen_cache = (keys[None, None, :] < slots[:, :1, None]).expand(b, length, total)
        seen_new = slots[:, None, :] <= slots[:, :, None]  # (B, L, L)
        allowed = torch.cat((seen_cache, seen_new), dim=-1)  # (B, L, T+L)
        new_k, new_v = [], []
        for i, layer in enumerate(dec.layers):
            a = layer.attn
            h = layer.pre_norm(x)
            q = split_heads(a.q_proj(h), a.n_head)
            k = split_heads(a.k_proj(h), a.n_kv_head)
            v = split_heads(a.v_proj(h), a.n_kv_head)
            q, k = _qk_norm_rope(q, k, a.q_norm, a.k_norm, cos, sin, True)
            new_k.append(k)
            new_v.append(v)
            x = x + a.o_proj(_two_block_attention(q, k, v, cache_k[i], cache_v[i], allowed, a.n_head))
            x = x + layer.mlp(layer.post_norm(x))
        hidden = dec.norm(x)
        return (hidden, dec.action_head(hidden).float(), dec.cb0_head(hidden).float(), *new_k, *new_v)


def group_stages(model: Dia2Model, group: int) -> list[int]:
    """The stages whose weights are group `group`'s (spec 3.6: `weights_schedule[s]`)."""
    return [s for s, g in enumerate(model.config.runtime.weights_schedule) if g == group]


def has_text_input(model: Dia2Model, group: int) -> bool:
    """Whether group `group`'s graph takes the stage-0 text (`depformer.text_embedding`)."""
    return model.depformer.text_embed is not None and model.config.runtime.weights_schedule[0] == group


class Dia2DepformerGraph(nn.Module):
    """One depformer stage of weight group `group`.

    Inputs: stage `(1,)` int64 (the global stage index; one of this group's), hidden `(B, D)`
    (the decoder's), prev_token `(B,)` int64 (codebook `stage` of this frame), cache_k/v per
    layer `(B, H, S, hd)` (slot s = stage s), and text_main / text_second `(B,)` int64 when the
    group holds stage 0 and the depformer embeds text.
    Outputs: logits `(B, codebook_size)` float32 (codebook stage+1), new_k/new_v per layer `(B, H, 1, hd)`.
    """

    def __init__(self, model: Dia2Model, group: int) -> None:
        super().__init__()
        dep = model.depformer
        stages = group_stages(model, group)
        g = str(group)
        self.dep, self.group = dep, g
        self.vocab = dep.audio_embeds[0].weight.shape[0]
        self.n_stages = dep.n_stages
        # Stage -> row of the stacked tables (other groups' stages never reach this graph).
        local = torch.zeros(dep.n_stages, dtype=torch.long)
        local[stages] = torch.arange(len(stages))
        self.register_buffer("local", local, persistent=False)
        # Embedding tables flattened to (n * V, Dd): one row is gathered, never a whole table.
        self.register_buffer("embeds", torch.cat([dep.audio_embeds[s].weight for s in stages]), persistent=False)
        self.single_head = dep.logits[stages[0]] if len(stages) == 1 else None
        if self.single_head is None:
            self.register_buffer("heads", torch.stack([dep.logits[s].weight[: dep.codebook_size] for s in stages]),
                                 persistent=False)
        self.text = has_text_input(model, group)

    def forward(self, stage, hidden, prev_token, cache_k, cache_v, text_main=None, text_second=None):
        dep, g = self.dep, self.group
        b = hidden.shape[0]
        row = self.local[stage]  # (1,)
        # (B, 1, Dd) throughout: on 3-D inputs the projections export as MatMul with a constant
        # weight (on 2-D ones as Gemm), which is what onnxruntime's quantizers rewrite.
        x = dep.depformer_in[g](hidden[:, None]) + self.embeds[row * self.vocab + prev_token][:, None]
        if self.text:
            extra = dep.text_embed(text_main[:, None], text_second[:, None])
            x = x + torch.where(stage == 0, extra, torch.zeros_like(extra))
        positions = stage.expand(b)[:, None]  # (B, 1): RoPE position = stage
        cos, sin = dep.rope.tables(positions)
        slots = cache_k[0].shape[2]
        seen = torch.arange(slots, device=hidden.device) < stage  # (S,) earlier stages of this frame
        allowed = torch.cat((seen, torch.ones_like(seen[:1])))[None, None, :].expand(b, 1, slots + 1)
        new_k, new_v = [], []
        for i, layer in enumerate(dep.layers):
            a = layer.self_attention
            qkv = a.in_proj[g](layer.pre_norm(x)).view(b, 3, a.n_head, a.head_dim)
            q, k, v = (t.unsqueeze(2) for t in qkv.unbind(1))  # (B, H, 1, hd)
            q, k = _qk_norm_rope(q, k, a.q_norm, a.k_norm, cos, sin, dep.apply_rope)
            new_k.append(k)
            new_v.append(v)
            out = _two_block_attention(q, k, v, cache_k[i], cache_v[i], allowed, a.n_head)  # (B, 1, H*hd)
            x = x + a.out_proj[g](out)
            x = x + layer.mlp(layer.post_norm(x))
        h = dep.norm(x)
        if self.single_head is not None:
            logits = self.single_head(h)[:, 0, : dep.codebook_size]
        else:
            logits = torch.matmul(h, self.heads[row][0].transpose(0, 1))[:, 0]
        return (logits.float(), *new_k, *new_v)


class Dia2CodecGraph(nn.Module):
    """`codes (B, C, T)` int64 -> waveform `(B, channels, T * hop)` through Mimi's decoder.

    C is the model's codebook count (the codec may hold more; decoding sums the first C). Codes
    must be real ids (0..2047): the driver checks them, as `Mimi.decode` does.
    """

    def __init__(self, mimi_model) -> None:
        super().__init__()
        self.model = mimi_model

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes)
