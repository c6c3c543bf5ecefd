"""Dia2's fused CPU step (fastdia/backends/cpu/dia2_fused.py) against the model's own forward."""

from __future__ import annotations

import warnings

import pytest
import torch

import fastdia
from fastdia.backends.cpu import dia2_fused
from fastdia.dia2.generation import Dia2Generator

pytestmark = pytest.mark.skipif(not dia2_fused.supported(fastdia.load("dia2-tiny-random")._generator.model,
                                                         torch.device("cpu")),
                                reason="fastdia's CPU kernels are not built for this CPU")


@pytest.fixture(scope="module")
def tts():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fastdia.load("dia2-tiny-random")


def _plain(tts) -> Dia2Generator:
    g = Dia2Generator(tts._generator.model, tts._generator.device, tts._generator.ids)
    g.transformer, g.stage = g.model.transformer, g.model.depformer.stage
    return g


@torch.inference_mode()
def test_decoder_step_and_stages_match_the_model(tts):
    model = tts._generator.model
    fused = dia2_fused.FusedDia2(model)
    cfg = model.config
    torch.manual_seed(0)
    b, steps = 4, 6
    caches = [model.new_decoder_cache(b, 16), model.new_decoder_cache(b, 16)]
    dep = [model.new_depformer_cache(b), model.new_depformer_cache(b)]
    width = cfg.data.n_codebooks + 2
    for t in range(steps):
        tokens = torch.randint(0, 8, (b, 1, width))
        pos = torch.full((b, 1), t)
        slots = torch.tensor([[t], [t], [t + 1], [t + 2]])  # rows at other cache slots (after a prefix)
        ref = model.transformer(tokens, pos, caches[0], slots=slots, kv_len=None)
        got = fused.transformer(tokens, pos, caches[1], slots=slots)
        torch.testing.assert_close(got.hidden, ref.hidden, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(got.cb0_logits, ref.cb0_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got.action_logits, ref.action_logits, atol=1e-4, rtol=1e-4)
        hidden = ref.hidden[:, 0]
        for s in range(cfg.n_stages):
            prev = torch.randint(0, cfg.data.codebook_size, (b,))
            text = (torch.randint(0, 8, (b,)), torch.randint(0, 8, (b,)))
            a = model.depformer.stage(s, hidden, prev, dep[0], text)
            c = fused.stage(s, hidden, prev, dep[1], text)
            torch.testing.assert_close(c, a, atol=1e-4, rtol=1e-4)


def test_greedy_codes_identical(tts):
    script = "[S1] Fused or not. [S2] The same codes. (laughs)"
    options = tts.generation_config(temperature=0, text_temperature=0, max_steps=60)
    entries = tts._entries(script)
    fused = tts._generator.generate(entries, options)
    plain = _plain(tts).generate(entries, options)
    assert torch.equal(fused.codes, plain.codes)
    assert fused.timestamps == plain.timestamps


@torch.inference_mode()
def test_bfloat16_weights_take_the_fused_float32_step(tts):
    """dtype="bfloat16" on a CPU with the kernels: bfloat16 projections (the GEMV kernel) around
    float32 norms, embeddings, cache and codebook-0 head, so the fused step serves it; its logits
    stay within bfloat16 rounding of float32."""
    from fastdia.backends.cpu.packed import GemvLinear

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bf = fastdia.load("dia2-tiny-random", dtype="bfloat16")
    g, model = bf._generator, bf._generator.model
    assert isinstance(g.stage.__self__, dia2_fused.FusedDia2)
    gemv = [m for m in model.modules() if isinstance(m, GemvLinear)]
    assert any(m.weight.dtype == torch.bfloat16 for m in gemv)
    assert model.transformer.cb0_head.weight.dtype == torch.float32
    assert model.transformer.norm.weight.dtype == torch.float32
    ref_model = tts._generator.model
    b = 2
    tokens = torch.randint(0, 8, (b, 1, model.config.data.n_codebooks + 2), generator=torch.Generator().manual_seed(3))
    pos = torch.zeros((b, 1), dtype=torch.long)
    got = g.transformer(tokens, pos, model.new_decoder_cache(b, 4), slots=pos, kv_len=1)
    ref = ref_model.transformer(tokens, pos, ref_model.new_decoder_cache(b, 4), slots=pos, kv_len=1)
    rel = (got.cb0_logits - ref.cb0_logits).norm() / ref.cb0_logits.norm()
    assert 0 < rel < 0.03, rel


@pytest.mark.parametrize("quantize", ["int8", "int4", None])
@torch.inference_mode()
def test_prepared_layer_plans_are_bitwise_the_unprepared_path(quantize):
    """layer_plan binds the same kernel calls once: decoder steps and stages equal bit for bit,
    with plans built (int4 decoder MLPs, int8 elsewhere on the tiny model; float32 unquantized)
    and rebuilt for a new cache."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fastdia.load("dia2-tiny-random", quantize=quantize)._generator.model
    cfg = model.config
    prepared, unprepared = dia2_fused.FusedDia2(model), dia2_fused.FusedDia2(model, plans=False)
    torch.manual_seed(1)
    b = 2
    width = cfg.data.n_codebooks + 2
    for run in range(2):  # a second run on new caches: the plans must follow the cache
        caches = [model.new_decoder_cache(b, 16), model.new_decoder_cache(b, 16)]
        dep = [model.new_depformer_cache(b), model.new_depformer_cache(b)]
        for t in range(4):
            tokens = torch.randint(0, 8, (b, 1, width))
            pos = torch.full((b, 1), t)
            got = prepared.transformer(tokens, pos, caches[0])
            ref = unprepared.transformer(tokens, pos, caches[1])
            for name in ("hidden", "action_logits", "cb0_logits"):
                assert torch.equal(getattr(got, name), getattr(ref, name)), name
            hidden = ref.hidden[:, 0]
            for s in range(cfg.n_stages):
                prev = torch.randint(0, cfg.data.codebook_size, (b,))
                text = (torch.randint(0, 8, (b,)), torch.randint(0, 8, (b,)))
                assert torch.equal(prepared.stage(s, hidden, prev, dep[0], text),
                                   unprepared.stage(s, hidden, prev, dep[1], text))
        assert torch.equal(caches[0].k[0], caches[1].k[0]) and torch.equal(dep[0].v[-1], dep[1].v[-1])
    assert set(prepared._plans) == {"decoder", "depformer"}
    assert all(len(by_cache.entries) == 1 for by_cache in prepared._plans.values())  # the first run's caches are gone
    held = {part: by_cache.entries[0][1] for part, by_cache in prepared._plans.items()}
    assert all(p is not None for plans in held.values() for p in plans.values()), held
    assert any(m.__class__.__name__ == "Int4Linear" for p in held["decoder"].values() for m in p._keep) \
        == (quantize == "int4")


def test_layer_plans_do_not_keep_a_finished_runs_cache_alive():
    import gc
    import weakref

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fastdia.load("dia2-tiny-random", quantize="int8")._generator.model
    fused = dia2_fused.FusedDia2(model)
    cache = model.new_decoder_cache(2, 16)
    width = model.config.data.n_codebooks + 2
    with torch.inference_mode():
        fused.transformer(torch.zeros(2, 1, width, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long), cache)
    assert fused._plans["decoder"].entries[0][1]  # a plan was built on this cache
    other = model.new_decoder_cache(2, 16)  # a second stream advanced in turn keeps its own plans
    with torch.inference_mode():
        for c in (other, cache, other):
            fused.transformer(torch.zeros(2, 1, width, dtype=torch.long), torch.ones(2, 1, dtype=torch.long), c)
    assert [ref() for ref, _ in fused._plans["decoder"].entries] == [cache, other]
    ref = weakref.ref(cache)
    del cache
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("quantize", ["int8", "int4", None])
@torch.inference_mode()
def test_embedding_lookups_in_c_are_bitwise_torchs(quantize):
    """The decoder's 32 codebook tables and each stage's table (int8 in quantized models, float32
    otherwise) are
    looked up and summed by one C call: the same floats as the modules' lookups and adds, and
    an id out of range is an error, not a read past the table."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fastdia.load("dia2-tiny-random", quantize=quantize)._generator.model
    fused = dia2_fused.FusedDia2(model)
    assert fused._dec_tables is not None and all(t is not None for t in fused._stage_tables)
    cfg, dec, dep = model.config, model.transformer, model.depformer
    torch.manual_seed(3)
    b = 6
    tokens = torch.randint(0, cfg.data.audio_vocab_size, (b, 1, cfg.data.n_codebooks + 2))
    tokens[..., :2] = torch.randint(0, 8, (b, 1, 2))
    assert torch.equal(fused._embed(dec, tokens), dec.embed(tokens).reshape(b, -1))
    base = torch.randn(b, dep.audio_embeds[0].embedding_dim)
    ids = torch.randint(0, cfg.data.audio_vocab_size, (b,))
    out = torch.empty_like(base)
    fused._stage_tables[2].add(fused.lib, out, base, ids)
    assert torch.equal(out, base + dep.audio_embeds[2](ids))
    ids[1] = cfg.data.audio_vocab_size
    with pytest.raises(ValueError, match="must lie in"):
        fused._stage_tables[2].add(fused.lib, out, base, ids)
    tokens[0, 0, 5] = -1
    with pytest.raises(ValueError, match="must lie in"):
        fused._embed(dec, tokens)


def test_a_program_runs_its_calls_in_c_as_ctypes_would():
    """layer_plan.Program: the calls of a plan as one table run by csrc/plan.c. A float argument
    is rounded to a C float as ctypes rounds it, None is a NULL pointer; a function the table
    cannot hold is refused when the program is built."""
    from fastdia.backends.cpu import kernels
    from fastdia.backends.cpu.layer_plan import Program

    lib = kernels._library()
    gen = torch.Generator().manual_seed(3)
    x, w, d = (torch.randn(3, 96, generator=gen) for _ in range(3))
    w = w[0].contiguous()
    p = torch.Tensor.data_ptr
    got, want = x.clone(), x.clone()
    y_got, y_want = torch.empty(3, 96), torch.empty(3, 96)
    eps = 1.0000000001e-5  # not a float32: both paths must round it the same way
    for residual in (None, d):
        lib.fd_add_rmsnorm(p(want), None if residual is None else p(residual), p(w), eps, 3, 96, p(y_want))
        Program(lib, [(lib.fd_add_rmsnorm, (p(got), None if residual is None else p(residual), p(w), eps, 3, 96,
                                            p(y_got)))]).run()
        assert torch.equal(got, want) and torch.equal(y_got, y_want)
    with pytest.raises(ValueError, match="cannot be a program call"):
        Program(lib, [(lib.fd_cfg_draw, (p(x), 96, 1.0, 5, 1.0, 5, 0.5))])
    with pytest.raises(ValueError, match="cannot be a program call"):
        Program(lib, [(lib.fd_silu_mul, (p(x), 3, 48))])  # an argument short


@torch.inference_mode()
@pytest.mark.parametrize("quantize", ["int8", None])
def test_the_c_frame_picks_what_the_stage_loop_picks(quantize):
    """FusedDia2.frame (csrc/plan.c: stages 1.. of a frame with their embeddings and draws in one
    C call) against the stage-by-stage loop (`stage`, then `pick`): the same sampled codes for a
    seeded run alone and for two scripts of other seeds and temperatures in one slot batch; the
    same greedy codes (the C pick against torch's argmax) alone and beside a sampling script."""
    from fastdia.dia2.options import Dia2GenerationConfig
    from fastdia.dia2.slots import Dia2SlotBatch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tts = fastdia.load("dia2-tiny-random", quantize=quantize)
    g = tts._generator
    real = g.frame
    assert real is not None
    ran = []

    def counted(*args):
        out = real(*args)
        ran.append(out is not None)
        return out

    scripts = ["[S1] Hello there, how are you doing today. [S2] Fine thanks.",
               "[S2] A different line (laughs). [S1] Okay then."]

    def alone(frame, **options) -> torch.Tensor:
        g.frame = frame
        gen = Dia2GenerationConfig(**({"seed": 7, "max_steps": 40} | options))
        return g.generate(tts._entries(scripts[0]), gen).extra["delayed"]

    def batch(frame, configs) -> list[torch.Tensor]:
        g.frame = frame
        slots = Dia2SlotBatch(g, len(configs), 200)
        runs = [slots.members[slots.join(c, None, entries=tts._entries(s))].run for c, s in zip(configs, scripts)]
        while any(m is not None and not m.finished for m in slots.members):
            slots.step()
        return [g.finish(r).extra["delayed"] for r in runs]

    stage = g.stage
    try:
        want_alone = alone(None)
        got = alone(counted)
        assert ran and all(ran) and torch.equal(got, want_alone)
        sampled = [Dia2GenerationConfig(seed=1, max_steps=40),
                   Dia2GenerationConfig(seed=2, temperature=1.3, top_k=9, cfg_scale=1.0, max_steps=40)]
        ran.clear()
        want = batch(None, sampled)
        got = batch(counted, sampled)
        assert ran and all(ran) and all(torch.equal(a, b) for a, b in zip(got, want))
        ran.clear()
        greedy = {"temperature": 0, "text_temperature": 0}
        for options in (greedy, greedy | {"cfg_scale": 2.7, "cfg_filter_k": 3}, greedy | {"cfg_scale": 1.0}):
            ran.clear()
            assert torch.equal(alone(counted, **options), alone(None, **options)) and ran and all(ran), options
        ran.clear()
        mixed = [sampled[0], Dia2GenerationConfig(seed=3, max_steps=40, **greedy)]
        want = batch(None, mixed)
        assert all(torch.equal(a, b) for a, b in zip(batch(counted, mixed), want)) and ran and all(ran)
        ran.clear()
        g.stage = lambda *args: stage(*args)  # a caller's own stage function sees every stage
        assert torch.equal(alone(counted), want_alone) and not ran
    finally:
        g.frame, g.stage = real, stage
