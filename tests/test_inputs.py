"""Bad input gets a clear error, never a traceback from deep inside torch; configs parse in both layouts."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fastdia import Dia, GenerationConfig
from fastdia.dia1.config import PRESETS, parse_config
from fastdia.errors import AudioError, CheckpointError, GenerationError, ModelNotFoundError, ScriptError
from fastdia.text import UnlistedTagWarning, tokenize, validate_script
from fastdia.dia1.layouts import export_state_dict, source_table
from tests.oracle import nested_config, save


@pytest.fixture(scope="module")
def tiny():
    return Dia.from_pretrained("tiny-random", device="cpu")


# ------------------------------------------------------------------------------------- text


def test_tokenizer_matches_spec_example():
    assert tokenize("[S1] Hi (laughs) [S2] ok.") == [
        1, 32, 72, 105, 32, 40, 108, 97, 117, 103, 104, 115, 41, 32, 2, 32, 111, 107, 46]
    assert tokenize("[S1] é") == [1, 32, 0xC3, 0xA9]


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("   \n", "empty"),
    ("Hello there", "must start with a speaker tag"),
    ("[S1] Hi [S3] who?", "unknown tag [S3]"),
    ("[S1] Hi [laughs]", "unknown tag [laughs]"),
    ("[S1] " + "a" * 1100, "at most 1024"),
    ("[S1]", "nothing to say"),
    ("[S1][S2][S1]", "nothing to say"),
    ("[S1]   [S2]\n", "nothing to say"),
])
def test_bad_scripts(text, words, tiny):
    with pytest.raises(ScriptError, match=words.replace("[", r"\[").replace("]", r"\]")):
        validate_script(text)
    with pytest.raises(ScriptError):
        tiny.generate_codes(text)


def test_non_string_script(tiny):
    with pytest.raises(ScriptError, match="must be a string"):
        tiny.generate_codes(123)


def test_script_limit_counts_tags_as_one_token():
    validate_script("[S1]" + "a" * 1023)  # exactly 1024 tokens is fine
    with pytest.raises(ScriptError, match="1025 tokens"):
        validate_script("[S1]" + "a" * 1024)


def test_unlisted_nonverbal_tag_warns():
    with pytest.warns(UnlistedTagWarning, match="giggles"):
        validate_script("[S1] Hi (giggles) [S2] ok.")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_script("[S1] Hi (laughs) [S2] ok (clears throat).")


# ------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("opts, words", [
    (dict(temperature=-1), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(cfg_filter_top_k=0), "cfg_filter_top_k"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=5000), "exceeds"),
    (dict(cfg_scale=float("nan")), "cfg_scale"),
    (dict(temperature=1e308), "temperature must be at most"),  # was a RuntimeError from torch
    (dict(cfg_scale=-1e9), "cfg_scale must be at most"),
    (dict(seed="x"), "seed"),
    (dict(top_q=0.5), "unknown generation option"),
])
def test_bad_options(opts, words, tiny):
    with pytest.raises(GenerationError, match=words):
        tiny.generate_codes("[S1] Hi.", **opts)


def test_bad_prompts(tiny):
    with pytest.raises(GenerationError, match=r"shape \[P, 9\]"):
        tiny.generate_codes("[S1] Hi.", audio_prompt=np.zeros((4, 8), dtype=np.int64))
    with pytest.raises(GenerationError, match="0..1023"):
        tiny.generate_codes("[S1] Hi.", audio_prompt=np.full((4, 9), 1024))
    with pytest.raises(AudioError, match="sample_rate"):  # float arrays are waveforms
        tiny.generate_codes("[S1] Hi.", audio_prompt=np.zeros((4, 9), dtype=np.float32))
    with pytest.raises(GenerationError, match="does not fit with the script"):
        tiny.generate_codes("[S1] Hi.", audio_prompt=np.zeros((40, 9), dtype=np.int64), max_tokens=50)
    with pytest.raises(GenerationError, match="without an audio_prompt"):
        tiny.generate_codes("[S1] Hi.", prompt_text="[S1] before.")
    with pytest.raises(GenerationError, match="one .* per text"):
        tiny.generate_codes(["[S1] a", "[S2] b"], audio_prompt=[np.zeros((3, 9), dtype=np.int64)])


def test_generation_config_is_frozen_and_validated():
    cfg = GenerationConfig()
    assert (cfg.max_tokens, cfg.cfg_scale, cfg.temperature, cfg.top_p, cfg.cfg_filter_top_k) == (3072, 3.0, 1.2, 0.95, 45)
    with pytest.raises(Exception):
        cfg.temperature = 2.0  # frozen


# ------------------------------------------------------------------------------------- configs


def test_parse_both_config_layouts(hf_models, tmp_path):
    hf = hf_models("gqa2-2layers")  # the nested v0.1 format has no encoder KV-head field: MHA encoder
    save(hf, tmp_path / "m", "transformers")
    written = json.loads((tmp_path / "m" / "config.json").read_text())
    a = parse_config(written)
    b = parse_config(nested_config(hf))
    assert a.source_format == "transformers" and not a.cross_attn_rope
    assert b.source_format == "nari" and b.cross_attn_rope
    for cfg in (a, b):
        assert cfg.decoder.n_head == 4 and cfg.decoder.n_kv_head == 2 and cfg.decoder.head_dim == 16
        assert cfg.decoder.cross_head_dim == 16 and cfg.encoder.head_dim == 16 and cfg.encoder.n_layer == 2
        assert cfg.encoder.d_model == 32 and cfg.decoder.d_ff == 128
        assert (cfg.bos_id, cfg.eos_id, cfg.pad_id) == (1026, 1024, 1025)
        assert cfg.delay_pattern == (0, 8, 9, 10, 11, 12, 13, 14, 15)
    assert a.encoder == b.encoder and a.decoder == b.decoder


def test_parse_token_ids_top_level_and_rope_theta():
    """The 0626 file: ids at the top level, rope_theta instead of rope_parameters."""
    raw = PRESETS["tiny-random"].to_transformers_dict()
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        raw["decoder_config"].pop(k)
    raw.update(bos_token_id=7, eos_token_id=8, pad_token_id=9)
    for sub in ("encoder_config", "decoder_config"):
        raw[sub].pop("rope_parameters")
        raw[sub]["rope_theta"] = 5000.0
        raw[sub]["rope_scaling"] = None
    cfg = parse_config(raw)
    assert (cfg.bos_id, cfg.eos_id, cfg.pad_id, cfg.rope_theta) == (7, 8, 9, 5000.0)


def test_bad_configs():
    with pytest.raises(CheckpointError, match="not a Dia config"):
        parse_config({"hello": 1})
    raw = PRESETS["tiny-random"].to_transformers_dict()
    raw["delay_pattern"] = [0, 1]
    with pytest.raises(CheckpointError, match="delay_pattern"):
        parse_config(raw)
    with pytest.raises(CheckpointError, match="missing field"):
        parse_config({"model": {"encoder": {}, "decoder": {}}})


# ------------------------------------------------------------------------------------- checkpoints


@pytest.fixture
def good_dir(tmp_path, hf_models):
    return save(hf_models("mha-1layer"), tmp_path / "good", "transformers")


def _rewrite(directory, edit):
    path = directory / "model.safetensors"
    state = dict(load_file(str(path)))
    edit(state)
    save_file(state, str(path))


def test_missing_tensor_is_named(good_dir):
    _rewrite(good_dir, lambda s: s.pop("model.decoder.layers.0.mlp.down_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.decoder\.layers\.0\.mlp\.down_proj\.weight'"):
        Dia.from_pretrained(good_dir, device="cpu")


def test_wrong_shape_is_named(good_dir):
    def edit(s):
        s["model.encoder.layers.0.self_attention.k_proj.weight"] = torch.zeros(7, 32)
    _rewrite(good_dir, edit)
    with pytest.raises(CheckpointError, match=r"k_proj\.weight' has shape \[7, 32\], expected \[48, 32\]"):
        Dia.from_pretrained(good_dir, device="cpu")


def test_unexpected_tensor_is_named(good_dir):
    _rewrite(good_dir, lambda s: s.__setitem__("model.decoder.extra.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.decoder\.extra\.weight'"):
        Dia.from_pretrained(good_dir, device="cpu")


def test_unknown_layout(good_dir):
    (good_dir / "model.safetensors").unlink()
    save_file({"transformer.h.0.attn.weight": torch.zeros(2, 2)}, str(good_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
        Dia.from_pretrained(good_dir, device="cpu")


def test_corrupt_and_absent_files(good_dir, tmp_path):
    (good_dir / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        Dia.from_pretrained(good_dir, device="cpu")
    (good_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        Dia.from_pretrained(good_dir, device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        Dia.from_pretrained(empty, device="cpu")


def test_unknown_model_names():
    with pytest.raises(ModelNotFoundError, match="tiny-random"):
        Dia.from_pretrained("no-such-preset", device="cpu")
    with pytest.raises(ModelNotFoundError, match="--model PATH"):
        Dia.from_pretrained("someone/not-downloadable-offline", device="cpu")


def test_export_round_trip(hf_models):
    """Our layout -> each checkpoint layout -> our layout is the identity, and matches transformers."""
    from fastdia.dia1.layouts import convert_state_dict
    from fastdia.dia1.config import parse_config as parse

    hf = hf_models("gqa4-3layers")
    cfg = parse(hf.config.to_dict())
    ours, layout = convert_state_dict(hf.state_dict(), cfg, torch.float32)
    assert layout == "transformers"
    exported = export_state_dict(ours, cfg, "transformers")
    assert set(exported) == set(source_table(cfg, "transformers")) == set(hf.state_dict())
    for k, v in hf.state_dict().items():
        torch.testing.assert_close(exported[k], v, rtol=0, atol=0)
    nari = export_state_dict(ours, cfg, "nari")
    back, layout = convert_state_dict(nari, cfg, torch.float32)
    assert layout == "nari"
    for k in ours:
        torch.testing.assert_close(back[k], ours[k], rtol=0, atol=0)


# ------------------------------------------------------------------------------------- CLI


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastdia.cli.main", *args], capture_output=True, text=True, timeout=300)


def test_cli_info(good_dir):
    r = run_cli("info", str(good_dir), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "checkpoint layout  transformers" in r.stdout and "parameters" in r.stdout and "float32" in r.stdout
    r = run_cli("info", "tiny-random", "--json")
    info = json.loads(r.stdout)
    assert info["checkpoint_layout"] == "preset" and info["parameters"] > 0 and info["dtype"] == "float32"


def test_cli_errors_are_one_line(tmp_path):
    r = run_cli("info", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no config.json" in r.stderr
    r = run_cli("info", "tiny-random", "--dtype", "int3")
    assert r.returncode == 2 and "unknown dtype" in r.stderr


def test_mixed_layout_checkpoint():
    """Layout is detected per key: original names with a transformers-style embedding still load."""
    from fastdia.dia1.config import PRESETS
    from fastdia.dia1.checkpoint import random_state
    from fastdia.dia1.layouts import convert_state_dict

    cfg = PRESETS["tiny-random"]
    ours = random_state(cfg)
    nari, hf = export_state_dict(ours, cfg, "nari"), export_state_dict(ours, cfg, "transformers")
    mixed = {k: v for k, v in nari.items() if not k.startswith("decoder.embeddings.")}
    mixed["model.decoder.embeddings.embed.weight"] = hf["model.decoder.embeddings.embed.weight"]
    back, layout = convert_state_dict(mixed, cfg, torch.float32)
    assert layout == "mixed" and all(torch.equal(back[k], ours[k]) for k in ours)
    mixed.pop("decoder.layers.1.self_attention.v_proj.weight")
    with pytest.raises(CheckpointError, match=r"missing tensor 'decoder\.layers\.1\.self_attention\.v_proj\.weight'"):
        convert_state_dict(mixed, cfg, torch.float32)
    mixed["decoder.embeddings.0.weight"] = nari["decoder.embeddings.0.weight"]
    with pytest.raises(CheckpointError, match="duplicates"):
        convert_state_dict(mixed, cfg, torch.float32)
