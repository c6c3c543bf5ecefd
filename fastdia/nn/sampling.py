"""Next-token selection for a batch of rows with their own settings, as pure tensor ops with no host syncs.

`sample_rows` is Dia-1's (spec 4.3): per item and channel, CFG picks the candidate set (top-k of
the guided logits) but the values sampled from are the conditional logits; PAD/BOS are never
emitted and only channel 0 may emit EOS; then temperature, the EOS argmax rule, top-k, top-p and
one counter-based draw. `cfg_pick_rows` is Dia2's (spec 5.4): the conditional row restricted to
the guided top-k (ties at the cut kept), then top-k, softmax at a temperature and an inverse-CDF
draw in id order; argmax at temperature 0, the reference's pick exactly.
"""

from __future__ import annotations

import torch

from .rng import uniform_at

NEG_INF = float("-inf")


def sample_rows(
    logits: torch.Tensor,
    cfg_scale: torch.Tensor,
    top_k: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    seeds: torch.Tensor,
    steps: torch.Tensor,
    eos: int,
    width: int,
    stream: int = 0,
    select=None,
    finish=None,
    guide=None,
) -> torch.Tensor:
    """CFG filter and draw for a batch whose rows each have their own settings, in one call.

    Dia-1's sampling (spec 4.3), per row b: the candidates are the top_k[b] ids of
    the guided logits `cond + cfg_scale[b] * (cond - uncond)` (ties broken by the lower id), PAD
    and BOS are never drawn and only channel 0 may draw EOS; greedy (temperature[b] == 0) takes
    the candidate with the largest conditional logit (the lower id among equals); otherwise the
    EOS rule, temperature, top_p and one counter-based uniform per (row, channel), keyed by
    (seeds[b], steps[b], stream, channel), that inverts the candidates' cumulative weights, taken in
    their fixed order (guided logit, then id).

    Every operation is exact per element or a sequential scan along a row, so a row's pick does
    not depend on the other rows or on `width` (the candidate columns kept: at least the largest
    top_k; columns past a row's top_k weigh exactly zero and so add nothing to its running sum).

    Args:
        logits: `(B, 2, C, V)` float32, uncond then cond.
        cfg_scale, temperature, top_p: `(B,)` float32; top_k: `(B,)` long (V for no limit).
        seeds, steps: `(B,)` int64 (seeds are ignored for greedy rows).
        eos: the EOS id; width: candidate columns, `max(top_k)` or more, a host int.
        select: `top_ids` or a function giving the same ids (a backend's kernel); default top_ids.
        finish: a backend's kernel for the rest, from the candidates on (the same greedy picks and
            uniforms; fastdia.backends.cpu.kernels.sample_finish); default the tensor ops below.
        guide: a backend's kernel for the guided logits, `guide(logits, cfg_scale)` -> `(B, C, V)`,
            bit for bit the tensor ops below (fastdia.backends.cpu.kernels.dia1_guided).

    Returns:
        `(B, C)` long ids.
    """
    uncond, cond = logits[:, 0], logits[:, 1]
    b, c, v = cond.shape
    guided = guide(logits, cfg_scale) if guide is not None else cond + cfg_scale.view(b, 1, 1) * (cond - uncond)
    order = (select or top_ids)(guided, width)  # (B, C, W)
    if finish is not None:
        return finish(logits, order, top_k, temperature, top_p, seeds, steps, stream, eos)
    rank = torch.arange(order.shape[-1], device=order.device)
    ok = rank.view(1, 1, -1) < top_k.view(b, 1, 1)
    ok = ok & (order <= eos)
    channel = torch.arange(c, device=order.device).view(1, -1, 1)
    ok = ok & ~((channel > 0) & (order == eos))
    vals = cond.gather(-1, order).masked_fill(~ok, NEG_INF)
    top = vals.max(dim=-1, keepdim=True).values
    greedy = torch.where(vals == top, order, v).min(dim=-1).values  # (B, C): the lower id among equals
    # Sampling rows: temperature, then the EOS rule (EOS exactly when it is the top logit).
    hot = temperature > 0
    t = torch.where(hot, temperature, torch.ones_like(temperature)).view(b, 1, 1)
    scaled = vals / t
    eos_top = (greedy == eos).unsqueeze(-1)
    scaled = scaled.masked_fill(eos_top & (order < eos), NEG_INF)
    scaled = scaled.masked_fill(~eos_top & (order == eos), NEG_INF)
    # Unnormalised probabilities: exact per element; top_p compares a sequential scan against
    # top_p times its own last value, so trailing zero columns change nothing.
    weights = torch.exp(scaled - scaled.max(dim=-1, keepdim=True).values)
    sorted_w, by_weight = weights.sort(dim=-1, descending=True, stable=True)
    mass = sorted_w.cumsum(dim=-1)
    exceeded = mass > top_p.view(b, 1, 1) * mass[..., -1:]
    drop_sorted = torch.cat((torch.zeros_like(exceeded[..., :1]), exceeded[..., :-1]), dim=-1)
    drop = torch.zeros_like(drop_sorted).scatter_(-1, by_weight, drop_sorted)
    weights = weights.masked_fill(drop, 0.0)
    # Inverse CDF in float64 (u * total never rounds up to total): the first column whose running
    # sum passes u * total, which always has weight > 0. One hash per (row, channel), where an
    # exponential race would need one per candidate (at 64 members: 576 against ~26,000).
    cum = weights.double().cumsum(dim=-1)
    u = uniform_at(seeds, steps, stream, channel.view(1, -1).expand(b, c), torch.float64)
    won = (cum <= (u * cum[..., -1]).unsqueeze(-1)).sum(dim=-1, keepdim=True).clamp_max(order.shape[-1] - 1)
    drawn = order.gather(-1, won).squeeze(-1)
    return torch.where(hot.view(b, 1), drawn, greedy)


def top_ids(x: torch.Tensor, width: int) -> torch.Tensor:
    """The ids of the `width` largest float32 values along the last dim, largest first, equal
    values by the lower id: a total order (unlike topk's unspecified ties), so the first k of
    them are the same set whatever `width` is. topk over one int64 key per id (the float's
    order-preserving bits, then the id) instead of a full stable sort: ~6x faster at V = 1028."""
    v = x.shape[-1]
    bits = x.float().contiguous().view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # float order as signed integers (negatives flipped)
    shift = max(1, (v - 1).bit_length())
    ids = torch.arange(v, device=x.device)
    # larger key: larger value, then lower id; the bit work in int32, one int64 pass to combine
    key = (ordered.to(torch.int64) << shift) + ((1 << shift) - 1 - ids)
    return key.topk(min(width, v), dim=-1).indices


def cfg_pick_rows(
    logits: torch.Tensor,
    first: torch.Tensor,
    limit: int,
    scale: torch.Tensor,
    cfg_k: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    u: torch.Tensor,
    widths: tuple[int, int],
) -> torch.Tensor:
    """Dia2's pick for a batch of scripts, each with its own settings, in one call.

    Script j's CFG pair is rows first[j] (cond) and first[j] + 1 (uncond) of `(rows, V)` logits.
    Its candidates are the cond ids whose guided logit `lerp(uncond, cond, scale[j])` is at least
    the cfg_k[j]-th largest (all at scale 1), restricted to ids below `limit` (the cut still ranks
    all V ids, as the reference filters before it masks). Temperature 0: their argmax (the first
    id among equals, torch's argmax: the reference's pick bit for bit). Otherwise softmax at
    temperature[j], the top_k[j] most likely kept, drawn by inverting the running sum in id order
    at the float64 uniform u[j] (one counter-based draw, fastdia.nn.rng).

    Every operation is per element, per row or a sequential scan along a row, so a script's pick
    does not depend on the other rows. `widths`: host ints at least max(cfg_k) and max(top_k)
    (their candidate columns). A backend may compute the same choice in one kernel
    (fastdia.backends.cpu.kernels.cfg_pick_rows: the same distribution, greedy bit for bit).

    Returns:
        `(n,)` long ids.
    """
    cond = logits.index_select(0, first).float()
    unc = logits.index_select(0, first + 1).float()
    n, v = cond.shape
    guided = torch.lerp(unc, cond, scale.view(n, 1).to(cond.dtype))
    order = top_ids(guided, min(widths[0], v))
    rank = (cfg_k.clamp(1, v) - 1).clamp(max=order.shape[1] - 1).view(n, 1)
    cut = guided.gather(1, order.gather(1, rank))  # the cfg_k-th largest guided value
    drop = (scale != 1.0).view(n, 1) & (guided < cut)
    if limit < v:
        drop = drop | (torch.arange(v, device=cond.device) >= limit).view(1, v)
    masked = cond.masked_fill(drop, NEG_INF)
    greedy = masked.argmax(dim=-1)
    hot = temperature > 0
    t = torch.where(hot, temperature, torch.ones_like(temperature)).view(n, 1).to(masked.dtype)
    p = torch.softmax(masked / t, dim=-1)
    p = torch.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0)
    best = top_ids(p, min(widths[1], v))
    in_k = torch.arange(best.shape[1], device=p.device).view(1, -1) < top_k.view(n, 1)
    kept = torch.zeros_like(p).scatter(1, best, p.gather(1, best) * in_k)
    kept = torch.where((top_k >= v).view(n, 1), p, kept)
    cum = kept.double().cumsum(dim=-1)
    total = cum[:, -1]
    drawn = (cum < (u.double() * total).view(n, 1)).sum(dim=-1)
    ids = torch.arange(v, device=p.device)
    last = torch.where(kept > 0, ids, 0).amax(dim=-1)  # the last id that can be drawn
    drawn = torch.where(total > 0, torch.minimum(drawn, last), 0)
    return torch.where(hot, drawn, greedy)
