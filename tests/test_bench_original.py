"""`fastdia bench --compare original`: what fastdia hands the original Dia2 runtime, and its errors.

The original runtime is not on PyPI (it installs from its repository), so CI cannot run it; these
tests check the folder fastdia writes for it with the libraries it reads that folder with
(transformers' tokenizer and MimiModel, safetensors), and the flag's errors. No timings.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch


def test_a_preset_is_written_in_the_layout_the_original_runtime_reads(tmp_path):
    from safetensors import safe_open

    from fastdia.bench.original import child_export
    from fastdia.dia2.checkpoint import expected_shapes, random_state
    from fastdia.dia2.config import DIA2_PRESETS, load_dia2_config
    from fastdia.dia2.text import builtin_tokenizer

    out = tmp_path / "model"
    child_export({"model": "dia2-tiny-random", "out": str(out)})
    cfg = load_dia2_config(out / "config.json")
    preset = DIA2_PRESETS["dia2-tiny-random"]
    assert dataclasses.replace(cfg, assets=preset.assets) == preset  # assets name the codec beside it
    raw = json.loads((out / "config.json").read_text())
    assert {"data", "model", "runtime", "assets"} <= set(raw)  # the reference's four blocks
    want = random_state(cfg)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(expected_shapes(cfg))  # the reference's parameter names, nothing else
        for name in f.keys():
            t = f.get_tensor(name)
            assert t.dtype == torch.float32 and torch.equal(t, want[name]), name

    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(out), use_fast=False)  # as the runtime loads it
    ours = builtin_tokenizer()
    text = "[S1] Hello there. [S2] Hi! (laughs)"
    assert tok.encode(text, add_special_tokens=False) == ours.encode(text)
    assert tok.convert_tokens_to_ids("[S1]") == ours.encode("[S1]")[0]
    mimi = transformers.MimiModel.from_pretrained(str(out / "mimi"))  # the codec it builds
    assert mimi.config.num_quantizers >= cfg.data.n_codebooks


def test_a_converted_folder_is_refused_for_the_original_runtime(tmp_path):
    from fastdia.bench.original import prepare
    from fastdia.dia2.checkpoint import convert_dia2

    convert_dia2("dia2-tiny-random", tmp_path / "int8", "int8")
    with pytest.raises(RuntimeError, match="written by fastdia convert"):
        prepare({"model": str(tmp_path / "int8"), "threads": 1})


def test_compare_original_without_the_runtime_is_one_clear_error():
    from fastdia.bench.original import original_available

    if original_available():
        pytest.skip("the original runtime is installed here; its absence cannot be shown")
    r = subprocess.run([sys.executable, "-m", "fastdia.cli.main", "bench", "--model", "dia2-tiny-random",
                        "--compare", "original"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("fastdia: error: --compare original:") and "pip install" in line
    assert "memory read bandwidth" not in r.stdout  # refused before the probe


@pytest.mark.parametrize("args, words", [
    (["--model", "dia2-tiny-random", "--compare", "bogus"], "--compare takes"),
    (["--model", "dia2-tiny-random", "--compare", "transformers"], "runs Dia-1 models"),
    (["--model", "tiny-random", "--compare", "original"], "are for Dia2 models"),
])
def test_compare_flag_errors(args, words):
    r = subprocess.run([sys.executable, "-m", "fastdia.cli.main", "bench", "--probe-mib", "64", "--steps", "1", *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("fastdia: error:") and words in r.stderr


def test_the_export_child_is_registered():
    from fastdia.bench.runner import CHILDREN
    from fastdia.bench.original import child_export, child_original

    assert CHILDREN["dia2_export"] is child_export and CHILDREN["dia2_original"] is child_original
