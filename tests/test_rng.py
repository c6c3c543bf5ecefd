"""Counter-based randomness (fastdia/nn/rng.py): a draw is a pure function of (seed, step, stream,
index), so a request's samples cannot depend on what else is in its batch or which path it takes."""

from __future__ import annotations

import numpy as np
import torch

from fastdia.nn import rng
from fastdia.nn.sampling import sample_rows

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


def _rows(n, cfg=3.0, k=45, temp=1.0, top_p=1.0):
    return (torch.full((n,), cfg), torch.full((n,), k, dtype=torch.long), torch.full((n,), temp),
            torch.full((n,), top_p))


def test_sample_rows_draws_from_the_distribution():
    """Guidance off (scale 0), no top-k or top-p: frequencies over 4,000 seeds follow
    softmax(cond / T), with the EOS rule (EOS exactly when it is the top logit) and only channel 0
    allowed EOS (id 49)."""
    torch.manual_seed(0)
    n, v = 4000, 50
    cond = torch.randn(2, v) * 2
    cond[0, 49] = cond[0].max() + 1.0  # channel 0: EOS is the top logit, so it is forced
    logits = torch.stack((torch.zeros(2, v), cond)).expand(n, 2, 2, v)
    picks = sample_rows(logits, *_rows(n, cfg=0.0, k=v, temp=0.9), torch.arange(n), torch.full((n,), 3), 49, v)
    assert bool((picks[:, 0] == 49).all())
    p = (cond[1, :49] / 0.9).softmax(-1).numpy()
    freq = np.bincount(picks[:, 1].numpy(), minlength=v)[:49] / n
    assert np.abs(freq - p).max() < 0.03, np.abs(freq - p).max()
    assert not bool((picks[:, 1] == 49).any())


def test_a_rows_pick_ignores_its_batch_its_settings_mix_and_the_width():
    torch.manual_seed(1)
    n, c, v = 6, 3, 64
    logits = torch.randn(n, 2, c, v)
    cfg = torch.tensor([3.0, 1.0, 0.5, 3.0, 2.0, 3.0])
    k = torch.tensor([45, 5, 64, 1, 20, 45])
    temp = torch.tensor([1.2, 0.0, 0.7, 1.0, 1.5, 1.2])
    top_p = torch.tensor([0.95, 1.0, 0.5, 1.0, 0.8, 0.95])
    seeds, steps = torch.tensor([11, 12, 13, 14, 15, 11]), torch.tensor([6, 6, 2, 9, 6, 7])
    together = sample_rows(logits, cfg, k, temp, top_p, seeds, steps, 63, 64)
    for b in range(n):
        alone = [sample_rows(logits[b: b + 1], cfg[b: b + 1], k[b: b + 1], temp[b: b + 1], top_p[b: b + 1],
                             seeds[b: b + 1], steps[b: b + 1], 63, width)[0] for width in (int(k[b]), 64)]
        assert torch.equal(together[b], alone[0]) and torch.equal(alone[0], alone[1]), b


def test_greedy_rows_take_the_best_candidate_lowest_id_first():
    """Temperature 0: the largest conditional logit among the top-k guided candidates; equal
    logits give the lower id (as argmax does); PAD and BOS (ids above EOS) are never taken."""
    v, eos = 12, 9
    cond = torch.zeros(1, 1, v)
    cond[0, 0, [2, 5]] = 4.0
    cond[0, 0, 10] = 9.0  # above EOS: never
    logits = torch.stack((torch.zeros_like(cond), cond), dim=1)  # (1, 2, 1, V)
    pick = sample_rows(logits, *_rows(1, cfg=1.0, k=v, temp=0.0), torch.tensor([0]), torch.tensor([1]), eos, v)
    assert int(pick[0, 0]) == 2


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


def test_a_member_of_a_batch_past_one_kernel_pass_draws_its_solo_codes(tts):
    """33 members are 66 rows with CFG, more than one kernel pass of 64: the step still gives
    each member the codes it gets alone (the kernels take the rows 64 at a time, each with its
    solo arithmetic; a BLAS would choose its kernel by the row count)."""
    from fastdia.dia1.options import GenerationConfig
    from fastdia.dia1.slots import SlotBatch
    from fastdia.text import tokenize

    g = tts._generator
    ask = GenerationConfig(max_tokens=40, seed=7)
    solo = g.generate([tokenize("[S1] One of many.")], [None], ask)[0]
    batch = SlotBatch(g, 33, 40)
    for i in range(32):
        batch.join(tokenize(f"[S2] Company {i}."), None, GenerationConfig(max_tokens=40, seed=100 + i))
    slot = batch.join(tokenize("[S1] One of many."), None, ask)
    with torch.inference_mode():
        while not batch.members[slot].finished:
            batch.step()
    assert torch.equal(batch.codes(slot), solo)


def test_the_kernels_candidate_search_is_top_ids_bit_for_bit():
    """fastdia's C selection (backends/cpu/kernels.top_ids, where the kernels run) returns exactly
    the ids of nn.sampling.top_ids, ties (equal values, signed zeros, -inf, NaN) included."""
    import pytest

    from fastdia.backends.cpu import kernels
    from fastdia.nn.sampling import top_ids

    if not kernels.available():
        pytest.skip(f"fastdia's CPU kernels are not available here: {kernels.unavailable_reason()}")
    torch.manual_seed(3)
    x = torch.randn(40, 3, 1028)
    x[0, 0, :100] = 1.0  # a tie across the cut
    x[1, 1, 5:] = float("-inf")
    x[2, 2, 7] = float("nan")
    x[3, 0] = 0.0
    x[3, 0, ::2] = -0.0
    x[4, 1] = x[4, 1].round()  # many ties
    x[5, 2, ::37] = float("nan")
    x[5, 2, 3::41] = -float("nan")
    x[6, 0, ::5] = float("inf")
    from fastdia.backends.cpu.features import cpu_features

    for build in cpu_features().kernel_variants:  # each build's filter (AVX-512 compresses, AVX2 scans)
        with kernels.use_variant(build):
            for width in (1, 2, 45, 64, 65, 100, 1027, 1028, 5000):
                assert torch.equal(kernels.top_ids(x, width), top_ids(x, width)), (build, width)
            assert torch.equal(kernels.top_ids(x[:, :, :3], 2), top_ids(x[:, :, :3], 2)), build
            assert torch.equal(kernels.top_ids(x[:, :, :37], 20), top_ids(x[:, :, :37], 20)), build


def test_a_long_prompt_is_prefilled_between_steps_and_draws_its_solo_codes(tts):
    """A request with a voice prompt longer than one prefill chunk joins a running batch: its
    prefill runs one chunk per step while the running member keeps decoding, and its codes equal
    its one-shot generation's (the same chunks either way)."""
    from fastdia.dia1.generation import PREFILL_CHUNK
    from fastdia.dia1.options import GenerationConfig
    from fastdia.dia1.slots import SlotBatch
    from fastdia.text import tokenize

    g = tts._generator
    frames = 2 * PREFILL_CHUNK + 40
    prompt = torch.randint(0, 1024, (frames, 9), generator=torch.Generator().manual_seed(5))
    text = tokenize("[S1] A prompt before this. [S2] And the answer.")
    gen = GenerationConfig(max_tokens=frames + 60, seed=3)
    with torch.inference_mode():
        solo = g.generate([text], [prompt], gen)[0]
        batch = SlotBatch(g, 2, frames + 60)
        runner = batch.join(tokenize("[S1] Already speaking."), None, GenerationConfig(max_tokens=frames + 60, seed=1))
        batch.step()
        before = int(batch.t[runner])
        slot = batch.join(text, prompt, gen)
        assert batch.prefilling == [slot] and not bool(batch.in_use[slot])
        batch.step()  # a second chunk; the running member decodes on meanwhile
        assert batch.prefilling == [slot] and int(batch.t[runner]) == before + 1
        while not batch.members[slot].finished:
            batch.step()
        assert torch.equal(batch.codes(slot), solo)


def test_a_batch_whose_only_member_is_prefilling_steps_its_prefill_alone(tts):
    """The first request into an empty batch has a long prompt: the steps run its prefill passes
    (nothing decodes, nothing is read from stores not made yet) until it decodes."""
    from fastdia.dia1.generation import PREFILL_CHUNK
    from fastdia.dia1.options import GenerationConfig
    from fastdia.dia1.slots import SlotBatch
    from fastdia.text import tokenize

    g = tts._generator
    frames = 4 * PREFILL_CHUNK + 10
    prompt = torch.randint(0, 1024, (frames, 9), generator=torch.Generator().manual_seed(6))
    gen = GenerationConfig(max_tokens=frames + 40, seed=4)
    text = tokenize("[S1] Alone with a prompt.")
    with torch.inference_mode():
        solo = g.generate([text], [prompt], gen)[0]
        batch = SlotBatch(g, 3, frames + 40)
        slot = batch.join(text, prompt, gen)
        batch.step()
        batch.step()
        assert batch.prefilling == [slot]
        while not batch.members[slot].finished:
            batch.step()
        assert torch.equal(batch.codes(slot), solo)


def test_the_kernels_draw_is_the_torch_draw():
    """fastdia's C finish of a Dia-1 draw (kernels.sample_finish): greedy picks bit for bit the
    torch path's; sampled picks too wherever expf and torch's exp do not round a cut apart (all
    of 2,880 here), with EOS rules, top_k, top_p and mixed settings per row."""
    import pytest

    from fastdia.backends.cpu import kernels

    if not kernels.available():
        pytest.skip(f"fastdia's CPU kernels are not available here: {kernels.unavailable_reason()}")
    gen = torch.Generator().manual_seed(0)
    same = total = 0
    for trial in range(20):
        b, c, v = 16, 9, 1028
        logits = torch.randn(b, 2, c, v, generator=gen) * (1 + trial % 3)
        if trial % 4 == 0:
            logits[:, 1, 0, 1024] = logits[:, 1, 0].max(-1).values + 1  # EOS on top of channel 0
        cfg = torch.rand(b, generator=gen) * 4
        k = torch.randint(1, 60, (b,), generator=gen)
        temp = torch.where(torch.rand(b, generator=gen) < 0.3, 0.0, torch.rand(b, generator=gen) * 1.5 + 0.1)
        top_p = torch.where(torch.rand(b, generator=gen) < 0.5, 1.0, torch.rand(b, generator=gen) * 0.9 + 0.1)
        seeds = torch.randint(-2**62, 2**62, (b,), generator=gen)
        steps = torch.randint(0, 3000, (b,), generator=gen)
        args = (logits, cfg, k, temp, top_p, seeds, steps, 1024, int(k.max()))
        torch_pick = sample_rows(*args, select=kernels.top_ids)
        c_pick = sample_rows(*args, select=kernels.top_ids, finish=kernels.sample_finish)
        greedy = (temp == 0).view(b, 1).expand(b, c)
        assert torch.equal(torch_pick[greedy], c_pick[greedy]), trial
        same += int((torch_pick == c_pick).sum())
        total += torch_pick.numel()
    assert same >= 0.995 * total, same / total
