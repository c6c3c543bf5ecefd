"""Dia2 on the CPU fast path: float32 GEMV modules, int8/int4 weight-only quantization, converted
checkpoints and batched rows, on the tiny random preset (and the golden-fixture folder for a
directory conversion). The oracle is fastdia's own plain-torch float32 model, which
tests/test_dia2_generation.py holds to the reference. No timings asserted."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fastdia
from fastdia import Dia2
from fastdia.backends.cpu import kernels as cpu_kernels
from fastdia.backends.cpu.packed import GemvLinear, PackedLinear
from fastdia.bench.dia2 import step_weight_bytes_dia2
from fastdia.bench.quality import compare_dia2, record_greedy, teacher_forced_dia2
from fastdia.loader import convert
from fastdia.dia2.checkpoint import load_dia2
from fastdia.dia2.config import DIA2_PRESETS
from fastdia.errors import FastDiaError
from fastdia.dia2.options import Dia2GenerationConfig
from fastdia.dia2.slots import Dia2SlotBatch
from fastdia.dia2.model import Dia2Model
from fastdia.dia2 import quantized as quant_dia2
from fastdia.quant.modules import Int4Linear, Int8Embedding, Int8Linear, RowSplitLinear
from tests.conftest import amx_code, dia2_fixtures, with_amx

PRESET = "dia2-tiny-random"
GREEDY = dict(temperature=0, text_temperature=0, max_steps=80)
SCRIPT = "[S1] Hello there, how are you doing today. [S2] Fine thanks, and you? [S1] Great."
OTHER = "[S2] A different line, said by someone else (laughs). [S1] Okay then."
STEPS = 64


def _load(**options) -> Dia2:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Dia2.from_pretrained(PRESET, device="cpu", **options)


@pytest.fixture(scope="module")
def plain():
    """The float32 model in plain torch (no module swap): the oracle."""
    tts = _load()
    loaded = load_dia2(PRESET, "cpu", torch.float32, optimize=False)
    return Dia2(loaded, tts.device, tts.dtype, tts.tokenizer, tts.codec_source)


@pytest.fixture(scope="module")
def reference(plain):
    """A greedy float32 run's inputs and codes, and the plain model's teacher-forced logits."""
    inputs, buffer = record_greedy(plain, SCRIPT, STEPS)
    return inputs, buffer, teacher_forced_dia2(plain.model, inputs, buffer, STEPS)


@pytest.fixture(scope="module", params=["int8", "int4"])
def quantized(request):
    return request.param, _load(quantize=request.param)


def _agreement(tts, reference) -> dict:
    inputs, buffer, ref = reference
    return compare_dia2(teacher_forced_dia2(tts.model, inputs, buffer, STEPS), ref)


def test_float_fast_path_is_applied_and_equals_plain(plain, reference):
    fast = _load()
    projections = [m for n, m in fast.model.named_modules() if isinstance(m, (nn.Linear, GemvLinear, PackedLinear))]
    assert projections and not any(type(m) is nn.Linear for m in projections)  # every one swapped
    assert not any(isinstance(m, (GemvLinear, PackedLinear)) for m in plain.model.modules())
    assert np.array_equal(fast.generate_codes(SCRIPT, **GREEDY), plain.generate_codes(SCRIPT, **GREEDY))
    r = _agreement(fast, reference)
    assert r["action_top1"] == 1.0 and r["min_codebook_top1"] == 1.0, r
    assert max(r["rel_error_cb0"], r["rel_error_stages"], r["rel_error_action"]) < 1e-4, r


def test_quantized_plan_on_the_2b_shape():
    """Which module of the 2B model gets which format (built on meta: free)."""
    cfg = DIA2_PRESETS["dia2-2b-random"]
    with torch.device("meta"):
        names = {n: m for n, m in Dia2Model(cfg).named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    plan = {mode: {n: quant_dia2.plan_dia2(n, (m.weight.shape[1]), mode) for n, m in names.items()}
            for mode in ("int8", "int4")}
    assert plan["int8"]["transformer.layers.3.mlp.wi"] == "int8"
    assert plan["int4"]["transformer.layers.3.mlp.wi"] == "int4"
    assert plan["int4"]["transformer.layers.3.attn.q_proj"] == "int4"
    assert plan["int4"]["transformer.layers.3.attn.k_proj"] == "int8"
    assert plan["int4"]["depformer.layers.1.self_attention.in_proj.4"] == "int4-query"
    assert plan["int4"]["depformer.layers.1.mlp.wo"] == "int4"
    for mode in ("int8", "int4"):
        assert plan[mode]["depformer.logits.30"] == "int8"  # heads stay 8 bits
        assert plan[mode]["depformer.depformer_in.2"] == "int8"
        assert plan[mode]["transformer.cb0_head"] is None
        assert plan[mode]["depformer.audio_embeds.7"] == "int8-embedding"
        assert plan[mode]["transformer.text_embed.embedding"] == "int8-embedding"
    assert quant_dia2.plan_dia2("transformer.layers.0.mlp.wi", 2048, None) is None


def test_quantized_modules_and_bytes(quantized):
    mode, tts = quantized
    model = tts.model
    assert isinstance(model.transformer.layers[0].attn.k_proj, Int8Linear)
    assert isinstance(model.depformer.logits[0], Int8Linear)
    assert isinstance(model.transformer.audio_embeds[0], Int8Embedding)
    assert isinstance(model.depformer.audio_embeds[0], Int8Embedding)
    # the tiny depformer's width (32) is below int4's 64-input blocks: its inputs stay int8
    mlp_in = Int4Linear if mode == "int4" else Int8Linear
    assert isinstance(model.transformer.layers[0].mlp.wi, mlp_in)
    assert isinstance(model.transformer.layers[0].mlp.wo, mlp_in)
    assert isinstance(model.depformer.layers[0].mlp.wo, mlp_in)
    assert isinstance(model.depformer.layers[0].mlp.wi, Int8Linear)
    float_bytes = step_weight_bytes_dia2(_load().model)
    got = step_weight_bytes_dia2(model)
    assert got["dram"] < float_bytes["dram"] / 2  # the tiny model's float cb0_head is a large share
    assert got["unique"] < got["dram"] and got["decoder"] < got["unique"]


def test_quantized_agrees_with_float(quantized, reference):
    """Teacher-forced top-1 agreement of the CFG-guided logits with float32 over 64 steps
    (measured with the kernels: int8 action 100%, codebooks mean 98%, min 94%; int4 100%, 90%, 83%;
    the tiny model's 32-wide depformer is far noisier under quantization than the 2B one)."""
    mode, tts = quantized
    r = _agreement(tts, reference)
    floor = {"int8": (0.95, 0.95, 0.85), "int4": (0.9, 0.8, 0.7)}[mode]
    assert r["action_top1"] >= floor[0] and r["mean_codebook_top1"] >= floor[1], r
    assert r["min_codebook_top1"] >= floor[2], r
    assert r["rel_error_cb0"] < (0.03 if mode == "int8" else 0.1), r
    assert 0 < r["mean_codebook_tv"] <= r["max_codebook_tv"] < (0.05 if mode == "int8" else 0.15), r
    codes = tts.generate_codes(SCRIPT, **GREEDY)
    assert codes.ndim == 2 and codes.shape[1] == 8 and codes.shape[0] > 0


def test_sampler_probs_are_the_distribution_the_sampler_draws_from():
    """bench_dia2_quality.sampler_probs (batched, for --quality's distances) against the sampler
    itself: cfg_filter, then softmax at the temperature restricted to the top_k, row by row; and
    sampling_distance is 0 for the same logits, and 1 for rows whose candidates are disjoint."""
    from fastdia.bench.quality import sampler_probs, sampling_distance
    from fastdia.dia2.generation import cfg_filter

    gen = torch.Generator().manual_seed(3)
    pairs = torch.randn(5, 3, 2, 300, generator=gen)
    for scale, cfg_k, temperature, top_k in ((2.0, 50, 0.8, 50), (1.0, 50, 1.3, 9), (3.0, 7, 0.6, 100)):
        got = sampler_probs(pairs, scale, cfg_k, temperature, top_k)
        for i in range(5):
            for j in range(3):
                p = torch.softmax(cfg_filter(pairs[i, j].double(), scale, cfg_k) / temperature, -1)
                if top_k < p.shape[-1]:
                    top = p.topk(top_k)
                    p = torch.zeros_like(p).scatter(0, top.indices, top.values)
                assert torch.allclose(got[i, j], p / p.sum(), atol=1e-12)
    parts = {"action": pairs[:, 0, :, :2], "cb0": pairs[:, 0], "stages": pairs}
    same = sampling_distance(parts, parts)
    assert same["mean_codebook_tv"] == 0 and same["action_tv"] == 0 and len(same["codebook_tv"]) == 4
    far = {k: v.clone() for k, v in parts.items()}
    far["cb0"][..., :150] -= 1e4  # every candidate of the copy lies in the other half
    ref = {k: v.clone() for k, v in parts.items()}
    ref["cb0"][..., 150:] -= 1e4
    assert sampling_distance(far, ref)["codebook_tv"][0] == pytest.approx(1.0)


def test_quantize_after_load_equals_build(quantized):
    """Swapping a loaded float model (quantize_dia2) gives the modules the quantized build makes."""
    mode, tts = quantized
    model = quant_dia2.quantize_dia2(load_dia2(PRESET, "cpu", torch.float32, optimize=False).model, mode)
    from fastdia.backends.cpu.dia2_linears import accelerate_dia2

    accelerate_dia2(model)
    for (na, a), (nb, b) in zip(model.state_dict().items(), tts.model.state_dict().items()):
        assert na == nb and torch.equal(a, b), na


def test_batch_rows_equal_single_rows(quantized):
    """Two different scripts decoded together in a Dia2SlotBatch give each its solo codes.

    Greedy: the quantized projections compute each row on its own, bit for bit, but the batch
    attends over its whole masked cache while a solo run attends over its filled slots only, and
    the two softmax/matmul reductions round differently (~1e-7, float32 models too). Sampled
    runs can therefore drift apart after some tens of steps; greedy ones pick the same codes."""
    _, tts = quantized
    g = tts._generator
    gens = [Dia2GenerationConfig(temperature=0, text_temperature=0, max_steps=60),
            Dia2GenerationConfig(temperature=0, text_temperature=0, max_steps=60, cfg_scale=3.0)]
    scripts = [SCRIPT, OTHER]
    solo = [g.generate(tts._entries(s), gen).codes for s, gen in zip(scripts, gens)]
    batch = Dia2SlotBatch(g, 2, 200)
    slots = [batch.join(gen, None, entries=tts._entries(s)) for s, gen in zip(scripts, gens)]
    runs = [batch.members[s].run for s in slots]
    built = []
    with torch.inference_mode():
        while any(m is not None and not m.finished for m in batch.members):
            batch.step()
            built.append(_prepared_plans(g, batch))
    for run, want in zip(runs, solo):
        assert torch.equal(g.finish(run).codes, want)
    if not cpu_kernels.available():
        return  # torch's kernels: no fused step, no prepared plans (FASTDIA_NO_KERNELS, or no AVX-512 VNNI)
    # The batch hands the backend the same cache views every step, so the C calls are prepared
    # once (a decoder plan and one per depformer stage) and kept, not prepared again each step.
    assert all(a <= b for a, b in zip(built[1:], built[2:]))
    assert len(built[-1]) == 1 + g.model.config.n_stages


def _prepared_plans(g, batch) -> set:
    """The ids of the prepared layer plans the fused Dia2 step holds for the batch's caches (none
    where the decoder runs in torch)."""
    fused = getattr(g.transformer, "__self__", None)
    if fused is None:
        return set()
    return {id(p) for by_cache in fused._plans.values() for ref, plans in by_cache.entries
            if any(ref() is view for view in batch._views.values()) for p in plans.values() if p is not None}


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_convert_round_trip(tmp_path, mode):
    out = tmp_path / mode
    summary = convert(PRESET, out, quantize=mode)
    assert summary["quantize"] == mode and summary["bytes"] > 0
    marker = json.loads((out / "config.json").read_text())["fastdia_quantization"]
    assert marker["family"] == "dia2" and marker["mode"] == mode
    assert (out / "tokenizer.json").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = fastdia.load(out, device="cpu")
    assert isinstance(loaded, Dia2) and isinstance(loaded.model.depformer.logits[0], Int8Linear)
    at_load = _load(quantize=mode)
    for (na, a), (nb, b) in zip(loaded.model.state_dict().items(), at_load.model.state_dict().items()):
        assert na == nb and torch.equal(a, b), na
    assert np.array_equal(loaded.generate_codes(SCRIPT, **GREEDY), at_load.generate_codes(SCRIPT, **GREEDY))
    assert loaded.codec_source == "mimi-tiny-random"
    with pytest.raises(FastDiaError, match="convert the original"):
        convert(out, tmp_path / "again", quantize="int8")


def test_convert_dia2_directory(tmp_path):
    """A Dia2 folder (the golden-fixture model) converts with its tokenizer and loads quantized."""
    model_dir = dia2_fixtures() / "model"
    if not model_dir.exists():
        pytest.skip("the Dia2 fixtures are not next to this checkout")
    out = tmp_path / "int8"
    convert(model_dir, out, quantize="int8")
    assert (out / "tokenizer.json").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv = fastdia.load(out, device="cpu")
        direct = Dia2.from_pretrained(model_dir, device="cpu", quantize="int8")
    assert isinstance(conv.model.transformer.layers[0].mlp.wi, Int8Linear)
    assert np.array_equal(conv.generate_codes("[S1] Hello there.", **GREEDY),
                          direct.generate_codes("[S1] Hello there.", **GREEDY))


def test_bad_quantize_and_group():
    with pytest.raises(FastDiaError, match="unknown quantization"):
        _load(quantize="int3")
    with pytest.raises(FastDiaError, match="group size"):
        load_dia2(PRESET, "cpu", quantize="int4", group_size=48)


@pytest.mark.skipif(not cpu_kernels.available(), reason="needs fastdia's CPU kernels")
def test_fast_modules_use_kernels():
    fast = _load()
    assert isinstance(fast.model.transformer.layers[0].attn.q_proj, GemvLinear)
    assert isinstance(_load(quantize="int4").model.depformer.layers[0].self_attention.in_proj["0"],
                      (Int8Linear, RowSplitLinear))


@pytest.mark.skipif(not amx_code(), reason="needs the kernels' AMX path (an AVX-512 build)")
def test_batch_on_amx_tiles_decodes_the_same_codes():
    """A batch of two scripts (4 rows per call, what the int8 AMX path takes) decodes the same
    codes with the AMX kernels as with AVX-512: csrc/amx.c's int8 sums are bitwise AVX-512's.
    The tile instructions run in their C emulation here (no AMX on this machine kind)."""
    tts = _load(quantize="int8")
    g = tts._generator
    gen = Dia2GenerationConfig(temperature=0, text_temperature=0, max_steps=24)

    def run() -> list[torch.Tensor]:
        batch = Dia2SlotBatch(g, 2, 200)
        slots = [batch.join(gen, None, entries=tts._entries(s)) for s in (SCRIPT, OTHER)]
        runs = [batch.members[s].run for s in slots]
        with torch.inference_mode():
            while any(m is not None and not m.finished for m in batch.members):
                batch.step()
        return [g.finish(r).codes for r in runs]

    want, _ = with_amx("off", run)
    got, products = with_amx("emulate", run)
    assert products > 0
    assert all(torch.equal(a, b) for a, b in zip(got, want))
