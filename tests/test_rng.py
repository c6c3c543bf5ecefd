"""Counter-based randomness (fastdia/nn/rng.py): a draw is a pure function of (seed, step, stream,
index), so a request's samples cannot depend on what else is in its batch or which path it takes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastdia.nn import rng
from fastdia.nn.sampling import select

SEEDS = torch.tensor([0, 1, 2**62 + 5, -7, 2**63 - 1, 123456789012345])


def test_a_row_depends_on_its_own_keys_only():
    u = rng.uniform(SEEDS, 7, 0, (9, 64))
    for r in range(len(SEEDS)):
        alone = rng.uniform(SEEDS[r: r + 1], 7, 0, (9, 64))
        assert torch.equal(u[r: r + 1], alone)
    # per-row steps: the same numbers as each row alone at its own step
    steps = torch.tensor([3, 9, 3, 0, 11, 2])
    mixed = rng.uniform(SEEDS, steps, 4, (5,))
    for r in range(len(SEEDS)):
        assert torch.equal(mixed[r], rng.uniform(SEEDS[r: r + 1], int(steps[r]), 4, (5,))[0])
    # another step, stream or seed gives other numbers
    assert not torch.equal(u, rng.uniform(SEEDS, 8, 0, (9, 64)))
    assert not torch.equal(u, rng.uniform(SEEDS, 7, 1, (9, 64)))
    assert not torch.equal(u[0], u[1])


def test_python_and_tensor_paths_agree_bit_for_bit():
    for seed in SEEDS.tolist():
        for step in (0, 5, 2**33 + 1):
            for stream, index in ((0, 0), (3, 2), (1, 1027)):
                want = float(rng.uniform_at(torch.tensor([seed]), step, stream, torch.tensor([[index]]),
                                            torch.float64))
                assert rng.uniform_one(seed, step, stream, index) == want


def test_uniforms_are_uniform_and_inside_the_open_interval():
    u = rng.uniform(torch.arange(32), 3, 0, (20_000,)).flatten().double()
    assert 0 < float(u.min()) and float(u.max()) < 1
    counts = torch.histc(u, 20, 0, 1)
    expected = u.numel() / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 60, chi2  # 19 degrees of freedom: p < 1e-5 above 50
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.std()) - (1 / 12) ** 0.5) < 0.005


def test_select_draws_from_the_distribution_and_ignores_its_batch():
    """The sampler's counter-based exponential race: frequencies follow softmax(logits / T), and
    an item's pick does not depend on the rows beside it."""
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 50) * 2  # (B, C, V); EOS is id 49
    n = 4000
    picks = torch.stack([select(logits, 1.0, 1.0, None, 49, torch.tensor([s]), 3) for s in range(n)])
    probs = logits[0].clone()
    eos_top = probs.argmax(-1) == 49
    for c in range(2):
        row = probs[c].clone()
        if eos_top[c]:
            row[:49] = float("-inf")
        else:
            row[49] = float("-inf")
        p = row.softmax(-1).numpy()
        freq = np.bincount(picks[:, 0, c].numpy(), minlength=50) / n
        assert np.abs(freq - p).max() < 0.03, (c, np.abs(freq - p).max())
    batch = torch.cat([logits, torch.randn(4, 2, 50)])
    seeds = torch.tensor([11, 12, 13, 14, 15])
    together = select(batch, 0.8, 0.9, 20, 49, seeds, 6)
    for b in range(5):
        assert torch.equal(together[b], select(batch[b: b + 1], 0.8, 0.9, 20, 49, seeds[b: b + 1], 6)[0])


@pytest.mark.parametrize("top_k", [None, 5])
def test_noise_is_keyed_by_id_so_candidates_choose_alike(top_k):
    """Noise belongs to (channel, id), not to a position in a sorted list: reordering the
    vocabulary's candidates does not change which id wins."""
    logits = torch.randn(1, 1, 30)
    seeds = torch.tensor([5])
    a = select(logits, 1.0, 1.0, top_k, 29, seeds, 2)
    b = select(logits.clone(), 1.0, 1.0, top_k, 29, seeds, 2)
    assert torch.equal(a, b)


def test_slot_batch_members_with_mixed_settings_draw_their_solo_codes(tts):
    """Dia-1 requests of different sampling settings and seeds decoding together, at other slots
    and beside other company, each give exactly the codes they give alone."""
    from fastdia.dia1.options import GenerationConfig
    from fastdia.dia1.slots import SlotBatch
    from fastdia.text import tokenize

    g = tts._generator
    asks = [("[S1] First of three.", GenerationConfig(max_tokens=70, seed=1)),
            ("[S2] A second, hotter one.", GenerationConfig(max_tokens=70, seed=2, temperature=1.5, top_p=0.8)),
            ("[S1] Third. [S2] Greedy.", GenerationConfig(max_tokens=70, temperature=0)),
            ("[S1] Fourth, low guidance.", GenerationConfig(max_tokens=70, seed=9, cfg_scale=1.5,
                                                            cfg_filter_top_k=20))]
    solo = [g.generate([tokenize(t)], [None], gen)[0] for t, gen in asks]
    for order in ([0, 1, 2, 3], [3, 1, 0]):
        batch = SlotBatch(g, 4, 70)
        if order[0] == 3:  # a different slot layout: a dummy member takes slot 0 first
            batch.join(tokenize("[S2] Company."), None, GenerationConfig(max_tokens=70, seed=5))
        slots = {i: batch.join(tokenize(asks[i][0]), None, asks[i][1]) for i in order}
        with torch.inference_mode():
            while any(m is not None and not m.finished for m in batch.members):
                batch.step()
        for i, slot in slots.items():
            assert torch.equal(batch.codes(slot), solo[i]), (order, i)
