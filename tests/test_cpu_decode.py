"""The fused CPU decode step (fastdia.backends.cpu.dia1_fused) against the model's own pure-torch forward."""

from __future__ import annotations

import copy

import pytest
import torch

from fastdia.backends.cpu import dia1_fused as cpu_decode
from fastdia.backends.cpu import kernels as cpu_kernels
from fastdia.dia1.generation import Dia1Generator
from fastdia.dia1.options import GenerationConfig
from fastdia.dia1.checkpoint import load_model
from fastdia.text import tokenize

from . import oracle

CPU = torch.device("cpu")
TEXTS = ["[S1] Hello there. [S2] Hi!", "[S1] A longer second script, so the text padding mask matters here."]

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="fastdia CPU kernels unavailable")


def _lockstep(gen, reference, steps: int, check) -> None:
    """Decode `steps` steps with `gen.decode` and with `reference` (a callable of the same
    signature) on two copies of one KV cache, feeding both the greedy frames of the reference's
    logits; `check(got, want, cache, ref_cache)` after every step."""
    gcfg = GenerationConfig(max_tokens=steps + 40, temperature=0)
    with torch.inference_mode():
        state = gen.prepare([tokenize(t) for t in TEXTS], [None, None], gcfg)
        ref_cache = copy.deepcopy(state.cache)
        for _ in range(steps):
            t = state.t
            current = state.tokens[:, t].repeat_interleave(2, dim=0).unsqueeze(1)
            positions = torch.full((current.shape[0], 1), t)
            want = reference(current, positions, ref_cache, state.cross, kv_len=t + 1)
            got = gen.decode(current, positions, state.cache, state.cross, kv_len=t + 1)
            check(got, want, state.cache, ref_cache)
            nxt = want.view(len(TEXTS), 2, 9, -1)[:, 1, :, :1024].argmax(-1)
            state.tokens[:, t + 1] = torch.where(state.tokens[:, t + 1] < 0, nxt, state.tokens[:, t + 1])
            state.t = t + 1


def _decoder_pair(model, steps: int = 24, cache_atol: float = 1e-5):
    """Worst relative logit difference of the fused step against `Decoder.forward` over `steps`
    steps, with the two KV caches compared after every step."""
    gen = Dia1Generator(model, CPU, torch.float32)
    assert isinstance(gen.decode, cpu_decode.FusedDecodeStep)
    worst = [0.0]

    def check(got, want, cache, ref_cache):
        worst[0] = max(worst[0], ((got - want).abs().max() / want.abs().max()).item())
        for a, b in zip(cache.k + cache.v, ref_cache.k + ref_cache.v):
            assert torch.allclose(a, b, atol=cache_atol)

    _lockstep(gen, model.decoder, steps, check)
    return worst[0]


@pytest.mark.parametrize("shape", list(oracle.SHAPES))
def test_fused_step_matches_forward(tmp_path, shape):
    """MHA and GQA 2/4, head dims 24/16/20 (not multiples of 16), cross head dim 12."""
    directory = oracle.save(oracle.hf_model(shape), tmp_path / shape, "transformers")
    model = load_model(directory, CPU, torch.float32).model
    assert _decoder_pair(model) < 2e-5


def test_fused_step_cross_rope(tmp_path):
    """v0.1 checkpoints rotate the cross-attention queries too."""
    directory = oracle.save_nested(oracle.hf_model("gqa2-2layers"), tmp_path / "v01")
    model = load_model(directory, CPU, torch.float32).model
    assert model.config.cross_attn_rope
    assert _decoder_pair(model) < 2e-5


def test_fused_step_only_for_cpu_float32():
    model = load_model("tiny-random", CPU, torch.float32).model
    assert cpu_decode.supported(model.decoder, CPU, torch.float32)
    assert not cpu_decode.supported(model.decoder, CPU, torch.bfloat16)
    assert not cpu_decode.supported(model.decoder, torch.device("meta"), torch.float32)


def test_fused_step_refuses_positions_outside_the_cache():
    model = load_model("tiny-random", CPU, torch.float32).model
    gen = Dia1Generator(model, CPU, torch.float32)
    gcfg = GenerationConfig(max_tokens=40, temperature=0)
    with torch.inference_mode():
        state = gen.prepare([tokenize(TEXTS[0])], [None], gcfg)
        current = state.tokens[:, 0].repeat_interleave(2, dim=0).unsqueeze(1)
        with pytest.raises(ValueError, match="positions"):
            gen.decode(current, torch.full((2, 1), 40), state.cache, state.cross, kv_len=40)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_models_keep_cross_kv_in_float16(tmp_path, mode):
    """A quantized decoder stores its cross-attention K/V in float16 (half the memory); the
    fused step reads them exactly as `Decoder.forward` does (which upcasts them)."""
    directory = oracle.save(oracle.hf_model("gqa2-2layers"), tmp_path / mode, "transformers")
    model = load_model(directory, CPU, torch.float32, quantize=mode).model
    gen = Dia1Generator(model, CPU, torch.float32)
    assert gen.decode.cross_dtype == torch.float16
    with torch.inference_mode():
        state = gen.prepare([tokenize(TEXTS[0])], [None], GenerationConfig(max_tokens=40, temperature=0))
    assert all(k.dtype == v.dtype == torch.float16 for k, v in zip(state.cross.k, state.cross.v))
    # The kernels quantize each activation row to int16, so the fused step's norms (equal to
    # torch's within float32 rounding) can move a matmul's result by an activation step.
    assert _decoder_pair(model, cache_atol=1e-3) < 1e-3
    assert Dia1Generator(load_model("tiny-random", CPU, torch.float32).model, CPU,
                         torch.float32).decode.cross_dtype is None  # float models: unchanged


def _held_plans(decode) -> list:
    """Every plan the fused step holds, over all caches (None where it could not prepare one)."""
    return [plan for _, plans in decode._plans.entries for plan in plans.values()]


def _plan_pair(model, steps: int = 12):
    """The prepared step (`_StepPlan`) against the same fused step without plans: equal logits
    and caches, bit for bit, and the prepared path was taken."""
    gen = Dia1Generator(model, CPU, torch.float32)

    def check(got, want, cache, ref_cache):
        assert torch.equal(got, want)
        for a, b in zip(cache.k + cache.v, ref_cache.k + ref_cache.v):
            assert torch.equal(a, b)

    _lockstep(gen, cpu_decode.FusedDecodeStep(model.decoder, plans=False), steps, check)
    plans = _held_plans(gen.decode)
    assert plans and all(p is not None for p in plans)


@pytest.mark.parametrize("mode", ["int8", "int4", None])
@pytest.mark.parametrize("layout", ["transformers", "nari"])
def test_prepared_step_is_bitwise_the_unprepared_one(tmp_path, mode, layout):
    """The prepared step makes the same C calls in the same order: the same logits and caches,
    bit for bit, for both layouts (v0.1 "nari" rotates the cross-attention queries), quantized
    or float32 (fastdia's float GEMV)."""
    hf = oracle.hf_model("gqa2-2layers")
    if layout == "nari":
        directory = oracle.save_nested(hf, tmp_path / str(mode))
    else:
        directory = oracle.save(hf, tmp_path / str(mode), "transformers")
    model = load_model(directory, CPU, torch.float32, quantize=mode).model
    assert model.config.cross_attn_rope == (layout == "nari")
    _plan_pair(model)


def test_prepared_steps_follow_their_cache_and_cross_state(tmp_path):
    """A plan is bound to one KV cache and cross state: a new run (new cache) gets its own, the
    finished run's cache is not kept alive by it."""
    import gc
    import weakref

    directory = oracle.save(oracle.hf_model("gqa2-2layers"), tmp_path / "q", "transformers")
    model = load_model(directory, CPU, torch.float32, quantize="int8").model
    gen = Dia1Generator(model, CPU, torch.float32)
    gcfg = GenerationConfig(max_tokens=30, temperature=0)
    with torch.inference_mode():
        first = gen.prepare([tokenize(TEXTS[0])], [None], gcfg)
        gen.step(first)
        ref = weakref.ref(first.cache)
        second = gen.prepare([tokenize(TEXTS[1])], [None], gcfg)
        gen.step(second)
        assert len(gen.decode._plans.entries) == 2
        del first
        gc.collect()
        assert ref() is None
    # A slot batch hands the step the same views of its stores every step: one plan, kept.
    from fastdia.dia1.slots import SlotBatch

    batch = SlotBatch(gen, 2, 64)
    for text in TEXTS[:2]:
        batch.join(tokenize(text), None, gcfg)
    with torch.inference_mode():
        held = []
        for _ in range(4):
            batch.step()
            held.append({id(p) for _, plans in gen.decode._plans.entries for p in plans.values()})
    assert held[0] == held[-1] and len(held[0] - {id(None)}) >= 1
