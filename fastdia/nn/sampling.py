"""Next-token selection for Dia-1 (spec 4.3), as pure tensor ops with no host syncs.

Per item and channel: CFG picks the candidate set (top-k of the guided logits) but the values
sampled from are the conditional logits; PAD/BOS are never emitted and only channel 0 may emit
EOS; then temperature, the EOS argmax rule, top-k, top-p and one counter-based draw.
"""

from __future__ import annotations

import torch

from .rng import exponential_at

NEG_INF = float("-inf")


def cfg_filter(logits: torch.Tensor, cfg_scale: float, top_k: int | None, eos: int) -> torch.Tensor:
    """CFG candidate filter plus the special-token masks.

    Args:
        logits: `(B, 2, C, V)` float32; index 0 of dim 1 is the unconditional row, 1 the conditional.
        cfg_scale: s in `cond + s * (cond - uncond)`.
        top_k: size of the candidate set (`cfg_filter_top_k`); None keeps every id.
        eos: the EOS id; ids above it (PAD, BOS, ...) are masked on all channels, and EOS itself
            on channels 1.. (only channel 0 may end the utterance).

    Returns:
        `(B, C, V)` conditional logits, -inf outside the candidate set and the allowed ids.
    """
    uncond, cond = logits[:, 0], logits[:, 1]
    guided = cond + cfg_scale * (cond - uncond)
    if top_k is not None and top_k < guided.shape[-1]:
        keep = torch.zeros_like(cond, dtype=torch.bool).scatter_(-1, guided.topk(top_k, dim=-1).indices, True)
        out = cond.masked_fill(~keep, NEG_INF)
    else:
        out = cond.clone()
    out[..., eos + 1:] = NEG_INF
    out[:, 1:, eos:] = NEG_INF
    return out


def select(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    top_k: int | None,
    eos: int,
    seeds: torch.Tensor | None,
    step: torch.Tensor | int = 0,
    stream: int = 0,
) -> torch.Tensor:
    """Pick one id per `(B, C)` row from filtered logits `(B, C, V)`.

    `temperature == 0` is greedy (argmax). Otherwise each item's draw is the exponential race
    argmax(p / noise) (an exact draw from p, no host sync) with Exp(1) noise that is a pure
    function of (seeds[b], step, stream, channel, id) (fastdia.nn.rng): the same item draws the
    same ids whatever else is in the batch. Noise is made for the candidates only (the `top_k`
    largest probabilities; every other id has probability 0 after the filters).
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    # EOS rule: EOS is emitted exactly when it is the top logit (force it, else suppress it).
    eos_top = (logits.argmax(dim=-1) == eos).unsqueeze(-1)  # (B, C, 1)
    ids = torch.arange(logits.shape[-1], device=logits.device)
    logits = logits.masked_fill(eos_top & (ids < eos), NEG_INF)
    logits = logits.masked_fill(~eos_top & (ids == eos), NEG_INF)
    vocab = logits.shape[-1]
    if top_k is not None and top_k < vocab:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    probs = logits.softmax(dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the mass strictly before it already exceeds top_p: this keeps the
        # token that crosses the threshold, and always the top-1.
        exceeded = sorted_probs.cumsum(dim=-1) > top_p
        drop_sorted = torch.cat((torch.zeros_like(exceeded[..., :1]), exceeded[..., :-1]), dim=-1)
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
    cand = probs.topk(min(top_k or vocab, vocab), dim=-1)  # (B, C, k)
    channel = torch.arange(probs.shape[1], device=probs.device).view(1, -1, 1)
    noise = exponential_at(seeds, step, stream, channel * vocab + cand.indices)
    win = (cand.values / noise.clamp_min(1e-30)).argmax(dim=-1, keepdim=True)
    return cand.indices.gather(-1, win).squeeze(-1)
