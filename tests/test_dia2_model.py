"""Dia2 config, strict loading and model math against the golden fixtures (shared/fixtures/dia2).

The fixtures are the original runtime's outputs on a tiny random model (fp32, CPU, greedy). Here
the model is teacher-forced on the recorded decoder inputs (README "checks", level 3):
  * decoder final-norm hidden states (warm-up and loop steps), action logits: all steps;
  * codebook-0 and depformer logits at the probe steps;
  * every greedy pick (action, codebook 0, all depformer stages) under the CFG rule.
Measured: hidden <= 1.6e-6, logits <= 4.4e-6 abs (logits are O(4)); asserted at 2e-5.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import dia2_fixtures
from fastdia.dia2.checkpoint import build_model, expected_shapes, load_dia2, parameter_count, random_state
from fastdia.dia2.config import DIA2_PRESETS, load_dia2_config, parse_dia2_config
from fastdia.errors import CheckpointError

FIXTURES = dia2_fixtures()
MODEL_DIR = FIXTURES / "model"
CASES = ["dialogue_cfg2", "single_nonverbal_break_cfg6", "prefix_two_speakers_cfg3"]
ATOL = 2e-5

pytestmark = pytest.mark.skipif(not MODEL_DIR.is_dir(), reason="Dia2 fixtures not available")


@pytest.fixture(scope="module")
def fixture_model():
    return load_dia2(MODEL_DIR).model


@pytest.fixture(scope="module")
def case_meta():
    meta = json.loads((FIXTURES / "cases.json").read_text())
    return {c["name"]: c for c in meta["cases"]}


def _rows(a: np.ndarray) -> torch.Tensor:
    """`(N, 2, ...)` fixture array -> `(2, N, ...)` tensor (CFG rows first)."""
    return torch.from_numpy(a).transpose(0, 1).contiguous()


def _teacher_forced(model, d, step_by_step: bool = False):
    """Run the decoder on the recorded inputs (warm-up first for prefix cases).

    Returns (warm-up output or None, loop-step hidden (2,N,D), action (2,N,2), cb0 (2,N,V)).
    """
    n_slots = len(d["loop_step"]) + (len(d["warmup_position"]) if "warmup_position" in d else 0) + 1
    cache = model.new_decoder_cache(2, n_slots)
    warm = None
    if "warmup_input_tokens" in d:
        pos = torch.from_numpy(d["warmup_position"])[None].expand(2, -1)
        warm = model.transformer(_rows(d["warmup_input_tokens"]), pos, cache)  # slots = positions
    tokens = _rows(d["decoder_input_tokens"])
    pos = torch.from_numpy(d["decoder_position"])[None].expand(2, -1)
    slots = torch.from_numpy(d["decoder_kv_slot"])[None].expand(2, -1)
    if not step_by_step:
        out = model.transformer(tokens, pos, cache, slots=slots)
        return warm, out.hidden, out.action_logits, out.cb0_logits
    outs = [model.transformer(tokens[:, i : i + 1], pos[:, i : i + 1], cache, slots=slots[:, i : i + 1])
            for i in range(tokens.shape[1])]
    cat = lambda f: torch.cat([f(o) for o in outs], dim=1)
    return warm, cat(lambda o: o.hidden), cat(lambda o: o.action_logits), cat(lambda o: o.cb0_logits)


def _cfg_pick(logits: torch.Tensor, scale: float, k: int, mask_from: int | None = None) -> int:
    """Greedy pick under the reference CFG rule (spec 5.5): conditional logits filtered to the
    top-k of the guided ones; for codebook 0, ids >= 2048 are then excluded."""
    cond = logits[0].clone()
    if scale != 1.0:
        guided = torch.lerp(logits[1], logits[0], scale)
        threshold = guided.topk(min(k, guided.numel())).values[-1]
        cond[guided < threshold] = float("-inf")
    if mask_from is not None:
        cond[mask_from:] = float("-inf")
    return int(cond.argmax())


def _max_err(a: torch.Tensor, b: np.ndarray) -> float:
    return (a - torch.from_numpy(b)).abs().max().item()


@pytest.mark.parametrize("case", CASES)
def test_teacher_forced_decoder_and_depformer(fixture_model, case_meta, case):
    model = fixture_model
    d = np.load(FIXTURES / f"case_{case}.npz")
    gen = case_meta[case]["generation"]
    scale, k = gen["cfg_scale"], gen["cfg_filter_k"]
    with torch.inference_mode():
        warm, hidden, action, cb0 = _teacher_forced(model, d)
        if warm is not None:
            assert _max_err(warm.hidden.transpose(0, 1), d["warmup_hidden"]) < ATOL
        assert _max_err(hidden.transpose(0, 1), d["decoder_hidden"]) < ATOL
        assert _max_err(action.transpose(0, 1), d["action_logits"]) < ATOL

        # Depformer over every loop step, fed the recorded picks of codebooks 0..C-2.
        sampled = torch.from_numpy(d["audio_sampled"])  # (N, C)
        dep_cache = model.new_depformer_cache(2)
        dep = torch.stack([
            model.depformer(hidden[:, i], sampled[i, :-1].expand(2, -1), dep_cache)
            for i in range(hidden.shape[1])
        ], dim=1)  # (2, N, S, 2048)

    steps = list(d["loop_step"])
    for j, t in enumerate(d["probe_steps"]):
        i = steps.index(t)
        assert _max_err(cb0[:, i], d["probe_cb0_logits"][j]) < ATOL, f"cb0 logits at step {t}"
        assert _max_err(dep[:, i].transpose(0, 1), d["probe_depformer_logits"][j]) < ATOL, f"depformer at {t}"

    bos = model.config.data.audio_bos_token_id
    for i in range(len(steps)):
        assert int(action[0, i].argmax()) == int(d["action"][i]), f"action at step {steps[i]}"
        picks = [_cfg_pick(cb0[:, i], scale, k, mask_from=min(bos, model.config.data.audio_pad_token_id))]
        picks += [_cfg_pick(dep[:, i, s], scale, k) for s in range(dep.shape[2])]
        assert picks == d["audio_sampled"][i].tolist(), f"audio picks at step {steps[i]}"


def test_step_by_step_matches_prefill(fixture_model):
    """The single-query decode path (one step per call, static cache) gives the same numbers."""
    d = np.load(FIXTURES / "case_prefix_two_speakers_cfg3.npz")
    with torch.inference_mode():
        _, hidden, action, cb0 = _teacher_forced(fixture_model, d, step_by_step=True)
    assert _max_err(hidden.transpose(0, 1), d["decoder_hidden"]) < ATOL
    assert _max_err(action.transpose(0, 1), d["action_logits"]) < ATOL
    i = list(d["loop_step"]).index(d["probe_steps"][-1])
    assert _max_err(cb0[:, i], d["probe_cb0_logits"][-1]) < ATOL


def test_depformer_stage_api_and_static_cache(fixture_model):
    """Stage-by-stage calls on one reused cache (no reset) equal the teacher-forced frame."""
    model = fixture_model
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, model.config.decoder.d_model, generator=g)
    tokens = torch.randint(0, 2048, (2, model.config.n_stages), generator=g)
    cache = model.new_depformer_cache(2)
    with torch.inference_mode():
        model.depformer(torch.randn_like(hidden), tokens.flip(0), cache)  # dirty the cache
        frame = model.depformer(hidden, tokens, cache)
        fresh_cache = model.new_depformer_cache(2)
        fresh = torch.stack([model.depformer.stage(s, hidden, tokens[:, s], fresh_cache)
                             for s in range(model.config.n_stages)], dim=1)
    assert frame.shape == (2, model.config.n_stages, 2048) and frame.dtype == torch.float32
    torch.testing.assert_close(frame, fresh, rtol=0, atol=0)


# Config


def test_fixture_config_parses_to_tiny_preset():
    cfg = load_dia2_config(MODEL_DIR / "config.json")
    tiny = DIA2_PRESETS["dia2-tiny-random"]
    assert dataclasses.replace(cfg, assets=tiny.assets) == tiny
    assert cfg.assets.mimi == "mimi" and cfg.assets.tokenizer is None
    assert cfg.n_codebooks == 8 and cfg.n_stages == 7 and cfg.runtime.weight_groups == (0, 1, 2, 3)
    assert parse_dia2_config(cfg.to_dict()) == cfg


def _raw_config() -> dict:
    return json.loads((MODEL_DIR / "config.json").read_text())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.pop("runtime"), "runtime"),
        (lambda r: r["data"].update(delay_pattern=[1, 2]), "delay_pattern"),
        (lambda r: r["model"]["depformer"].update(kv_heads=1), "kv_heads"),
        (lambda r: r["model"]["decoder"].update(gqa_query_heads=3), "query heads"),
        (lambda r: r["model"]["decoder"].pop("n_layer"), "n_layer"),
        (lambda r: r["runtime"].update(weights_schedule=[0, 1]), "weights_schedule"),
        (lambda r: r["model"]["linear"].update(mlp_activations=["tanh", "linear"]), "tanh"),
        (lambda r: r["data"].update(text_pad_token_id=999), "text_pad_token_id"),
    ],
)
def test_bad_config_is_rejected(edit, message):
    raw = _raw_config()
    edit(raw)
    with pytest.raises(CheckpointError, match=message):
        parse_dia2_config(raw)


def test_runtime_defaults():
    raw = _raw_config()
    raw["runtime"] = {}
    cfg = parse_dia2_config(raw)
    assert cfg.runtime.weights_schedule == tuple(range(7)) and cfg.runtime.max_context_steps == 1500
    assert cfg.depformer.text_embedding is False  # explicit in the file
    del raw["model"]["depformer"]["text_embedding"]
    assert parse_dia2_config(raw).depformer.text_embedding is True  # the reference default


# Strict loading


def _copy_with(tmp_path: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copy(MODEL_DIR / "config.json", tmp_path / "config.json")
    state = load_file(str(MODEL_DIR / "model.safetensors"))
    edit(state)
    save_file(state, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_missing_tensor_is_named(tmp_path):
    key = "depformer.layers.1.self_attention.in_proj.2.weight"
    _copy_with(tmp_path, lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=r"missing.*" + key.replace(".", r"\.")):
        load_dia2(tmp_path)


def test_unexpected_tensor_is_named(tmp_path):
    _copy_with(tmp_path, lambda s: s.update({"depformer.depformer_in.9.weight": torch.zeros(32, 64)}))
    with pytest.raises(CheckpointError, match=r"unexpected.*depformer\.depformer_in\.9\.weight"):
        load_dia2(tmp_path)


def test_misshaped_tensor_is_named(tmp_path):
    key = "transformer.layers.0.attn.k_proj.weight"
    _copy_with(tmp_path, lambda s: s.update({key: torch.zeros(16, 64)}))
    with pytest.raises(CheckpointError, match=r"wrong shapes: .*k_proj\.weight has shape \[16, 64\], expected \[32, 64\]"):
        load_dia2(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_dia2(tmp_path)
    shutil.copy(MODEL_DIR / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_dia2(tmp_path)


def test_loaded_weights_are_the_files(fixture_model):
    from safetensors.torch import load_file

    state = load_file(str(MODEL_DIR / "model.safetensors"))
    ours = fixture_model.state_dict()
    assert set(state) == set(ours)
    assert all(torch.equal(state[k], ours[k]) for k in state)


# Presets


def test_tiny_preset_builds_and_runs():
    loaded = load_dia2("dia2-tiny-random")
    model, cfg = loaded.model, loaded.config
    again = random_state(cfg)
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())  # seeded
    tokens = torch.full((2, 3, cfg.data.channels), cfg.data.text_pad_token_id)
    tokens[..., 2:] = cfg.data.audio_bos_token_id
    pos = torch.arange(3).expand(2, 3)
    with torch.inference_mode():
        out = model.transformer(tokens, pos, model.new_decoder_cache(2, 8))
        dep = model.depformer.stage(0, out.hidden[:, -1], torch.zeros(2, dtype=torch.long),
                                    model.new_depformer_cache(2))
    assert out.action_logits.shape == (2, 3, 2) and out.cb0_logits.shape == (2, 3, 2050)
    assert dep.shape == (2, 2048) and torch.isfinite(dep).all()


def test_2b_preset_shapes():
    """The 2B shape of spec 2.4: 450 tensors, 1,919,556,608 parameters (built on meta only)."""
    cfg = DIA2_PRESETS["dia2-2b-random"]
    shapes = expected_shapes(cfg)
    assert len(shapes) == 450 and parameter_count(cfg) == 1_919_556_608
    assert shapes["transformer.layers.27.mlp.wi.weight"] == (12288, 2048)
    assert shapes["depformer.layers.3.self_attention.in_proj.4.weight"] == (3072, 1024)
    assert shapes["depformer.logits.30.weight"] == (2050, 1024)
    assert "depformer.text_embed.embedding.weight" not in shapes


def test_depformer_text_embedding_variant():
    """`depformer.text_embedding: true` adds a full-rank text embedding at stage 0 only."""
    tiny = DIA2_PRESETS["dia2-tiny-random"]
    cfg = dataclasses.replace(tiny, depformer=dataclasses.replace(tiny.depformer, text_embedding=True))
    shapes = expected_shapes(cfg)
    assert shapes["depformer.text_embed.embedding.weight"] == (512, 32)
    assert shapes["depformer.text_embed.main_proj.weight"] == (32, 32)
    model = build_model(cfg, random_state(cfg))
    hidden, prev = torch.randn(1, 64).expand(2, -1), torch.tensor([5, 5])
    pad = cfg.data.text_pad_token_id
    with torch.inference_mode():
        cache = model.new_depformer_cache(2)
        a = model.depformer.stage(0, hidden, prev, cache, text=(torch.tensor([9, 9]), torch.tensor([pad, 11])))
    assert not torch.allclose(a[0], a[1])  # the second stream counts only where it is not pad
    with torch.inference_mode():
        b = model.depformer.stage(0, hidden, prev, cache, text=(torch.tensor([9, 9]), torch.tensor([pad, pad])))
    torch.testing.assert_close(b[0], a[0], rtol=0, atol=0)
    torch.testing.assert_close(b[1], b[0], rtol=0, atol=0)
    with pytest.raises(ValueError):
        model.depformer.stage(0, hidden, prev, cache)

