"""Dia2's C draw (csrc/sample.c) against the torch sampler it replaces on CPUs with the kernels."""

from __future__ import annotations

import pytest
import torch

from fastdia.backends.cpu import kernels as cpu_kernels
from fastdia.backends.cpu.features import cpu_features
from fastdia.dia2.generation import cfg_filter

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="fastdia's CPU kernels are not built here")


def _torch_probs(logits, scale, cfg_k, temperature, top_k):
    """The torch sampler's distribution (fastdia.dia2.generation.sample over cfg_filter)."""
    masked = cfg_filter(logits, scale, cfg_k)
    p = torch.softmax(masked.double() / temperature, -1)
    if 0 < top_k < p.shape[-1]:
        top = p.topk(top_k)
        p = torch.zeros_like(p).scatter(0, top.indices, top.values)
    return p / p.sum()


@pytest.mark.parametrize("scale,cfg_k,top_k", [(2.0, 12, 5), (3.0, 40, 50), (1.0, 50, 8)])
def test_draws_follow_the_torch_samplers_distribution(scale, cfg_k, top_k):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 96, generator=g) * 2
    expected = _torch_probs(logits, scale, cfg_k, 0.8, top_k)
    n = 20000
    u = torch.rand(n, generator=g, dtype=torch.float64)
    counts = torch.zeros(96, dtype=torch.float64)
    for x in u.tolist():
        counts[cpu_kernels.cfg_draw(logits, scale, cfg_k, 0.8, top_k, x)] += 1
    freq = counts / n
    assert set((freq > 0).nonzero().flatten().tolist()) <= set((expected > 0).nonzero().flatten().tolist())
    sigma = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= 5 * sigma + 1e-12).all(), (freq - expected).abs().max()


def test_inverse_cdf_ends_and_nothing_to_draw():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0, -3.0], [0.0, 5.0, 1.0, 4.0, -3.0]])
    kept = [1, 3]  # the two best of cond (= guided here), top_k 2
    assert cpu_kernels.cfg_draw(logits, 2.0, 2, 1.0, 2, 0.0) == kept[0]
    assert cpu_kernels.cfg_draw(logits, 2.0, 2, 1.0, 2, 1.0 - 1e-12) == kept[1]
    dead = torch.full((2, 5), float("-inf"))
    assert cpu_kernels.cfg_draw(dead, 2.0, 2, 1.0, 2, 0.5) == 0
    with pytest.raises(ValueError):
        cpu_kernels.cfg_draw(logits, 2.0, 2, 0.0, 2, 0.5)


def test_the_greedy_pick_is_torchs_argmax_bit_for_bit():
    """fd_cfg_greedy against argmax(cfg_filter(...)) on inputs built to split hairs: ties (logits on
    a coarse grid), rows a few ulps apart (so the guided values crowd the cut), NaNs in either
    row, CFG scales below and above lerp's 0.5 switch and non-powers of two (where a separate
    multiply and add would round differently from torch's fused one), and lengths with a tail
    after the last full vector."""
    gen = torch.Generator().manual_seed(0)
    trials = 0
    for V in (2048, 2050, 37, 5):
        for scale in (1.0, 2.0, 3.0, 2.5, 0.3, 0.49, 0.5, 1.7, 4.13, -0.7):
            for k in (1, 2, 50, V, V + 3):
                for kind in range(6):
                    x = torch.randn(2, V, generator=gen)
                    if kind == 1:
                        x = (x * 4).round() / 4
                    elif kind == 2:
                        x[1] = x[0] + 1e-7 * torch.randn(V, generator=gen)
                    elif kind == 3:
                        x[0, 3] = float("nan")
                    elif kind == 4:
                        x[1, 1:4] = float("nan")
                    elif kind == 5:
                        x = x * 1e4
                    if scale != 1.0:  # the filter's input, bit for bit (at 1.0 cfg_filter does not lerp)
                        guided = cpu_kernels.cfg_guided(x, scale).view(torch.int32)
                        assert torch.equal(guided, torch.lerp(x[1], x[0], scale).view(torch.int32))
                    want = int(cfg_filter(x, scale, k).argmax())
                    assert cpu_kernels.cfg_greedy(x, scale, k) == want, (V, scale, k, kind)
                    trials += 1
    assert trials == 4 * 10 * 5 * 6


@pytest.mark.parametrize("v", [1028, 37])
def test_dia1_guided_logits_are_torchs_bit_for_bit(v):
    """Dia-1's `cond + s * (cond - uncond)` in one C pass against torch's three operations, per-row
    scales (0, 1, 3, negative), NaN and infinities included, a width that is not a multiple of 16."""
    g = torch.Generator().manual_seed(v)
    logits = torch.randn(4, 2, 9, v, generator=g) * 7
    logits[0, 1, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    logits[1, 0, 2, 5] = float("inf")
    scale = torch.tensor([3.0, 0.0, 1.0, -2.5])
    uncond, cond = logits[:, 0], logits[:, 1]
    want = cond + scale.view(4, 1, 1) * (cond - uncond)
    for build in cpu_features().kernel_variants:  # every build this CPU runs
        with cpu_kernels.use_variant(build):
            got = cpu_kernels.dia1_guided(logits, scale)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), build
