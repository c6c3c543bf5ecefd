"""Dia2 free-running generation against the golden fixtures (level 4 of their README): greedy
generation with each case's settings gives the reference's codes, end step, transcript and word
timestamps exactly; sampling is reproducible with a seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import dia2_fixtures
from fastdia.dia2.checkpoint import load_dia2
from fastdia.errors import GenerationError
from fastdia.dia2.generation import Dia2Generator, Prefix
from fastdia.dia2.options import Dia2GenerationConfig
from fastdia.dia2.text import Dia2Tokenizer, build_prefix_plan, parse_script

FIXTURES = dia2_fixtures()
CASES = json.loads((FIXTURES / "cases.json").read_text()) if FIXTURES.exists() else {"cases": []}
pytestmark = pytest.mark.skipif(not FIXTURES.exists(), reason="the Dia2 fixtures are not next to this checkout")


@pytest.fixture(scope="module")
def setup():
    loaded = load_dia2(FIXTURES / "model")
    tok = Dia2Tokenizer.from_file(FIXTURES / "model" / "tokenizer.json")
    data = loaded.config.data
    ids = tok.text_ids(data.text_pad_token_id, data.text_new_word_token_id, data.text_zero_token_id)
    return Dia2Generator(loaded.model, torch.device("cpu"), ids), tok, ids


def run_case(setup, c, z, **over):
    gen, tok, ids = setup
    g = c["generation"]
    options = Dia2GenerationConfig(cfg_scale=g["cfg_scale"], cfg_filter_k=g["cfg_filter_k"], temperature=0,
                                   text_temperature=0, initial_padding=g["initial_padding"]).with_overrides(**over)
    prefix = None
    if "prefix" in c:
        p, frames = c["prefix"], c["prefix_plan"]["frames_per_speaker"]
        plan = build_prefix_plan(tok, (p["speaker_1"]["words"], frames[0]), (p["speaker_2"]["words"], frames[1]))
        codes = torch.as_tensor(np.concatenate([z["prefix_codes_s1"], z["prefix_codes_s2"]], axis=1))
        prefix = Prefix(plan, codes, include_audio=p["include_prefix"])
    return gen.generate(parse_script(c["script"], tok, ids), options, prefix)


def assert_delayed_equal(got: np.ndarray, ref: np.ndarray, case: dict) -> None:
    """The delayed buffer equals the reference's wherever it is read: codebook c from column
    delay[c] on (decoder input and audio). Before every depformer codebook's delay the reference
    still runs the depformer and keeps its picks, which nothing reads; fastdia skips those stages
    and holds audio BOS there (Dia2Generator.dep_from)."""
    data = json.loads((FIXTURES / "model" / "config.json").read_text())["data"]
    delays, bos = data["delay_pattern"], data["audio_bos_token_id"]
    assert got.shape == ref.shape
    first = min(delays[1:])  # columns 1..first-1 of codebooks 1.. are the skipped ones
    for c, d in enumerate(delays):
        np.testing.assert_array_equal(got[c, d:], ref[c, d:])
        if c == 0:
            np.testing.assert_array_equal(got[c], ref[c])  # codebook 0 is sampled at every step
    early, early_ref = got[1:, 1:first], ref[1:, 1:first]
    assert (early[early != early_ref] == bos).all()  # skipped columns hold BOS (a prefix's own pad stays)


@pytest.mark.parametrize("c", CASES["cases"], ids=[c["name"] for c in CASES["cases"]])
def test_greedy_generation_equals_reference(setup, c):
    z = np.load(FIXTURES / c["arrays"])
    r, expect = run_case(setup, c, z), c["result"]
    assert (r.start_step, r.end_step, r.last_step, r.crop) == (expect["start_step"], expect["end_step"],
                                                              expect["last_step"], expect["crop"])
    assert_delayed_equal(r.extra["delayed"].numpy(), z["audio_delayed"], c)
    np.testing.assert_array_equal(r.codes.T.numpy(), z["audio_codes"])
    assert [list(w) for w in r.transcript] == expect["transcript"]
    assert [list(w) for w in r.timestamps] == expect["timestamps"]


def test_sampling_is_reproducible_and_bounded(setup):
    c = CASES["cases"][0]
    z = np.load(FIXTURES / c["arrays"])
    a = run_case(setup, c, z, temperature=0.8, text_temperature=0.6, seed=5)
    b = run_case(setup, c, z, temperature=0.8, text_temperature=0.6, seed=5)
    d = run_case(setup, c, z, temperature=0.8, text_temperature=0.6, seed=6)
    assert torch.equal(a.codes, b.codes) and a.transcript == b.transcript
    assert not torch.equal(a.codes, d.codes) or a.transcript != d.transcript
    assert int(a.codes.max()) < 2048 and int(a.codes.min()) >= 0
    short = run_case(setup, c, z, max_steps=10)
    assert short.last_step == 9


def test_bad_options():
    for bad in (dict(cfg_scale=0), dict(temperature=-1), dict(top_k=0), dict(max_steps=0), dict(seed=1.5)):
        with pytest.raises(GenerationError):
            Dia2GenerationConfig(**bad)
    with pytest.raises(GenerationError, match="unknown"):
        Dia2GenerationConfig().with_overrides(temprature=1)
