"""Dia2's C draw (csrc/sample.c) against the torch sampler it replaces on CPUs with the kernels."""

from __future__ import annotations

import pytest
import torch

from fastdia.backends.cpu import kernels as cpu_kernels
from fastdia.generation.dia2 import cfg_filter

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="fastdia's CPU kernels are not built here")


def _torch_probs(logits, scale, cfg_k, temperature, top_k):
    """The torch sampler's distribution (fastdia.generation.dia2.sample over cfg_filter)."""
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
