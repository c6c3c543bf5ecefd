"""The Dia2 facade end to end: `fastdia.load` picks the family; greedy synthesis of the fixture model
gives the reference's codes, waveform and timestamps (README levels 4-5), prefix included."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from tests.conftest import dia2_fixtures
import fastdia
from fastdia import Dia, Dia2, Speech, VoicePrompt
from fastdia.errors import FastDiaError, GenerationError, ScriptError

FIXTURES = dia2_fixtures()
pytestmark = pytest.mark.skipif(not FIXTURES.exists(), reason="the Dia2 fixtures are not next to this checkout")
GREEDY = dict(temperature=0, text_temperature=0)


def case(name):
    cases = json.loads((FIXTURES / "cases.json").read_text())["cases"]
    c = next(c for c in cases if c["name"] == name)
    return c, np.load(FIXTURES / c["arrays"])


@pytest.fixture(scope="module")
def fixture_model():
    return fastdia.load(FIXTURES / "model", device="cpu")


@pytest.fixture(scope="module")
def preset():
    return fastdia.load("dia2-tiny-random", device="cpu")


def test_load_picks_the_family(fixture_model, preset):
    assert isinstance(fixture_model, Dia2) and isinstance(preset, Dia2)
    assert isinstance(fastdia.load("tiny-random", device="cpu"), Dia)
    assert fixture_model.sample_rate == 24000
    assert str(fixture_model.codec_source).endswith("mimi")  # the checkpoint's assets.mimi


@pytest.mark.parametrize("name", ["dialogue_cfg2", "single_nonverbal_break_cfg6"])
def test_synthesize_equals_reference(fixture_model, name):
    c, z = case(name)
    g = c["generation"]
    speech = fixture_model.synthesize(c["script"], cfg_scale=g["cfg_scale"], cfg_filter_k=g["cfg_filter_k"], **GREEDY)
    assert isinstance(speech, Speech) and speech.sample_rate == 24000
    np.testing.assert_array_equal(speech.codes.T, z["audio_codes"])
    np.testing.assert_allclose(speech.audio, z["waveform"], atol=1e-5, rtol=0)
    assert [list(w) for w in speech.timestamps] == c["result"]["timestamps"]


def test_prefix_voices_equal_reference(fixture_model):
    c, z = case("prefix_two_speakers_cfg3")
    p, g = c["prefix"], c["generation"]
    # The stored 24 kHz waveforms (the reference resamples by linear interpolation; we use soxr).
    s1 = VoicePrompt(audio=z["prefix_audio_s1"], sample_rate=24000, words=p["speaker_1"]["words"])
    s2 = VoicePrompt(audio=z["prefix_audio_s2"], sample_rate=24000, words=p["speaker_2"]["words"])
    speech = fixture_model.synthesize(c["script"], prefix_speaker_1=s1, prefix_speaker_2=s2,
                                      include_prefix=p["include_prefix"], cfg_scale=g["cfg_scale"], **GREEDY)
    np.testing.assert_array_equal(speech.codes.T, z["audio_codes"])
    np.testing.assert_allclose(speech.audio, z["waveform"], atol=1e-5, rtol=0)
    assert [list(w) for w in speech.timestamps] == c["result"]["timestamps"]


def test_preset_seeded_and_shaped(preset, tmp_path):
    script = "[S1] Hello there, how are you today? [S2] I am fine. (laughs)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = preset.synthesize(script, seed=3)
        b = preset.generate(script, seed=3)
    codes = preset.generate_codes(script, seed=3)
    assert np.array_equal(a.codes, codes) and np.array_equal(a.audio, b)
    assert codes.dtype == np.int64 and codes.shape[1] == 8 and len(a.audio) == len(codes) * 1920
    assert [w for w, _ in a.timestamps][:2] == ["Hello", "there,"]
    assert preset.save_audio(tmp_path / "x.wav", a.audio).exists()
    back = preset.encode(a.audio, 24000)
    assert back.shape == codes.shape


def test_errors(preset, tmp_path):
    with pytest.raises(GenerationError, match="needs prefix_speaker_1"):
        preset.generate_codes("[S1] Hi.", prefix_speaker_2=VoicePrompt(np.zeros(4800, np.float32), 24000, "Hi"))
    with pytest.raises(GenerationError, match="transcript"):
        preset.generate_codes("[S1] Hi.", prefix_speaker_1=VoicePrompt(np.zeros(4800, np.float32), 24000))
    with pytest.raises(ScriptError):
        preset.generate_codes("[S1] Hi [S3] there.")
    with pytest.raises(GenerationError, match="unknown generation option"):
        preset.generate_codes("[S1] Hi.", temprature=1)
    with pytest.raises(FastDiaError, match="quantization"):
        Dia2.from_pretrained("dia2-tiny-random", quantize="int3")
    with pytest.warns(UserWarning, match="spread evenly"):
        preset.generate_codes("[S1] Hi.", seed=1, max_steps=40,
                              prefix_speaker_1=VoicePrompt(np.zeros(9600, np.float32), 24000, text="[S1] Hello you"))


def cli(*args):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fastdia.cli.main", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def subprocess_bytes(*args):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fastdia.cli.main", *args], capture_output=True, timeout=300, env=env)


def test_cli_say_and_info_dia2(tmp_path, preset):
    import soundfile as sf

    out = tmp_path / "d2.wav"
    r = cli("say", "[S1] Hello there. [S2] Hi! (laughs)", "-o", str(out), "--model", "dia2-tiny-random",
            "--seed", "4", "--max-steps", "60")
    assert r.returncode == 0, r.stderr
    data, sr = sf.read(out, dtype="float32")
    assert sr == 24000 and len(data) % 1920 == 0 and "words" in r.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = preset.generate("[S1] Hello there. [S2] Hi! (laughs)", seed=4, max_steps=60)
    assert len(ref) == len(data) and np.abs(ref - data).max() < 1e-4  # 16-bit rounding
    r = subprocess_bytes("say", "[S1] Hello there. [S2] Hi! (laughs)", "-o", "-", "--model", "dia2-tiny-random",
                         "--seed", "4", "--max-steps", "60")
    assert r.returncode == 0 and r.stdout[:4] == b"RIFF"
    piped = np.frombuffer(r.stdout[44:], dtype="<i2").astype(np.float32) / 32768
    assert len(piped) == len(data) and np.abs(piped - data).max() <= 2 / 32768
    wav = str(FIXTURES / "prefix" / "prefix_s1.wav")
    r = cli("say", "[S1] Hi there.", "-o", str(out), "--model", "dia2-tiny-random", "--seed", "1", "--max-steps", "60",
            "--prefix-speaker-1", wav, "--prefix-text-1", "[S1] Hello everyone, good morning.")
    assert r.returncode == 0, r.stderr
    for args, words in ((("--top-p", "0.5"), "--top-p does not apply to Dia2"),
                        (("--prefix-speaker-1", wav), "goes with --prefix-text-1 or --prefix-words-1"),
                        (("--prefix-speaker-2", wav, "--prefix-text-2", "Hi"), "needs --prefix-speaker-1"),
                        (("--prefix-speaker-1", str(tmp_path / "none.wav"), "--prefix-text-1", "Hi"), "none.wav")):
        r = cli("say", "[S1] Hi.", "-o", str(out), "--model", "dia2-tiny-random", *args)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("fastdia: error:")]
        assert r.returncode == 2 and len(lines) == 1 and words in lines[0], r.stderr
    for flag in (("--top-k", "5"), ("--include-prefix",)):
        r = cli("say", "[S1] Hi.", "-o", str(out), "--model", "tiny-random", *flag)
        assert r.returncode == 2 and "does not apply to a Dia-1 model" in r.stderr
    r = cli("info", "dia2-tiny-random", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["family"] == "dia2"


STREAM_SCRIPT = "[S1] Hello there, how are you today? [S2] I am fine. (laughs) Thanks for asking!"


@pytest.mark.parametrize("chunk_seconds", [0.08, 0.24, 2.0])
def test_stream_out_equals_one_shot(preset, chunk_seconds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = preset.synthesize(STREAM_SCRIPT, seed=3)
    chunks = list(preset.stream(STREAM_SCRIPT, seed=3, chunk_seconds=chunk_seconds))
    frames = max(1, round(chunk_seconds * 12.5))
    assert all(len(c.audio) == frames * 1920 for c in chunks[:-1])
    np.testing.assert_allclose(np.concatenate([c.audio for c in chunks]), ref.audio, atol=1e-4, rtol=0)
    assert [w for c in chunks for w in c.words] == list(ref.timestamps)
    for c in chunks:  # each word arrives with the chunk its time falls in (or an earlier one)
        assert all(0 <= t for _, t in c.words)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stream_text_in_equals_one_shot(preset, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = preset.synthesize(STREAM_SCRIPT, seed=7)
    rng = np.random.default_rng(seed)
    cuts = sorted(rng.choice(np.arange(1, len(STREAM_SCRIPT)), 6 + 4 * seed, replace=False).tolist())
    pieces = [STREAM_SCRIPT[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM_SCRIPT)])]
    read = []

    def source():  # a generator, as an LLM's token stream would be
        for p in pieces:
            read.append(p)
            yield p

    chunks = preset.stream(source(), seed=7)
    first = next(chunks)
    assert len(read) < len(pieces)  # audio came before the whole text was read
    rest = list(chunks)
    audio = np.concatenate([first.audio] + [c.audio for c in rest])
    np.testing.assert_allclose(audio, ref.audio, atol=1e-4, rtol=0)
    assert [w for c in [first, *rest] for w in c.words] == list(ref.timestamps)
    with pytest.raises(ScriptError):
        preset.stream(42)


def test_stream_with_prefix_equals_reference(fixture_model):
    c, z = case("prefix_two_speakers_cfg3")
    p = c["prefix"]
    s1 = VoicePrompt(audio=z["prefix_audio_s1"], sample_rate=24000, words=p["speaker_1"]["words"])
    s2 = VoicePrompt(audio=z["prefix_audio_s2"], sample_rate=24000, words=p["speaker_2"]["words"])
    chunks = list(fixture_model.stream(c["script"], prefix_speaker_1=s1, prefix_speaker_2=s2, cfg_scale=3.0, **GREEDY))
    np.testing.assert_allclose(np.concatenate([ch.audio for ch in chunks]), z["waveform"], atol=1e-4, rtol=0)
    assert [list(w) for ch in chunks for w in ch.words] == c["result"]["timestamps"]


def test_stream_async_text_in(preset):
    import asyncio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = preset.synthesize(STREAM_SCRIPT, seed=7)

    async def pieces():
        for word in STREAM_SCRIPT.split(" "):
            await asyncio.sleep(0)
            yield word + " "

    async def collect():
        return [c async for c in preset.stream(pieces(), seed=7)]

    chunks = asyncio.run(collect())
    np.testing.assert_allclose(np.concatenate([c.audio for c in chunks]), ref.audio, atol=1e-4, rtol=0)
    assert [w for c in chunks for w in c.words] == list(ref.timestamps)

    async def bad():
        yield "[S1] Hi"
        yield 42

    async def fails():
        return [c async for c in preset.stream(bad(), seed=1)]

    with pytest.raises(ScriptError, match="must be strings"):
        asyncio.run(fails())


def test_cli_dia2_voices_timestamps_and_bad_input(tmp_path, preset):
    import soundfile as sf

    wav = tmp_path / "alice.wav"
    sf.write(wav, (0.2 * np.sin(np.linspace(0, 800, 44100))).astype(np.float32), 44100)
    voices = str(tmp_path / "voices")
    r = cli("voice", "add", "alice", str(wav), "--text", "[S1] Hello there my friend.", "--model", "tiny-random",
            "--voices-dir", voices)
    assert r.returncode == 0, r.stderr
    out, stamps = tmp_path / "v.wav", tmp_path / "t.json"
    base = ("--model", "dia2-tiny-random", "--seed", "2", "--max-steps", "60")
    r = cli("say", "[S1] Hi there.", "-o", str(out), *base, "--voice", "alice", "--voices-dir", voices,
            "--timestamps", str(stamps))
    assert r.returncode == 0, r.stderr
    # The saved voice is the same prefix as its kept audio and transcript given directly.
    from fastdia.voices import VoiceStore

    v = VoiceStore(voices).get("alice")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = preset.synthesize("[S1] Hi there.", seed=2, max_steps=60,
                                prefix_speaker_1=VoicePrompt(v.audio, 24000, text=v.text))
    data, _ = sf.read(out, dtype="float32")
    assert len(data) == len(ref.audio) and np.abs(data - ref.audio).max() < 1e-4
    assert json.loads(stamps.read_text()) == [[w, round(t, 3)] for w, t in ref.timestamps]
    words = tmp_path / "w.json"
    words.write_text(json.dumps([["Hello", 0.1, 0.4], ["there", 0.45, 0.9]]))
    r = cli("say", "[S1] Hi there.", "-o", str(out), *base, "--prefix-speaker-1", str(wav),
            "--prefix-words-1", str(words))
    assert r.returncode == 0, r.stderr
    bad_words = tmp_path / "bad.json"
    bad_words.write_text("[1, 2]")
    for args, msg in (((" ",), "empty"), (("[S1] Hi [S3] there.",), "[S3]"),
                      (("[S1] Hi.", "--max-steps", "3"), "max_steps=3 is too small"),
                      (("[S1] Hi.", "--prefix-speaker-1", str(tmp_path / "missing.wav"), "--prefix-text-1", "Hi"),
                       "missing.wav"),
                      (("[S1] Hi.", "--prefix-speaker-1", str(wav), "--prefix-words-1", str(bad_words)),
                       "must be a JSON list"),
                      (("[S1] Hi.", "--voice", "nobody", "--voices-dir", voices), "nobody")):
        extra = [a for a in base if a not in ("--max-steps", "60")] if "--max-steps" in args else list(base)
        r = cli("say", args[0], "-o", str(out), *extra, *args[1:])
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("fastdia: error:")]
        assert r.returncode == 2 and len(lines) == 1 and msg in lines[0] and "Traceback" not in r.stderr, (args, r.stderr)


def test_batched_scripts_draw_their_solo_codes(preset):
    """A Dia2 script's codes are the same alone (one-shot) and in a slot batch of 3 or 16, at any
    slot, beside scripts with other sampling settings (greedy among them), other seeds and other
    lengths: every pick is per script, with its own counter-based draws."""
    from fastdia.dia2.slots import Dia2SlotBatch

    g = preset._generator
    scripts = ["[S1] First of them.", "[S2] A second one, longer than the first. [S1] Yes.", "[S1] Third. (laughs)"]
    gens = [preset.generation_config(seed=1, max_steps=60),
            preset.generation_config(seed=2, temperature=1.1, top_k=20, cfg_scale=3.0, max_steps=60),
            preset.generation_config(temperature=0, text_temperature=0, max_steps=60),
            preset.generation_config(seed=9, cfg_scale=1.0, cfg_filter_k=10, text_temperature=0.9, max_steps=60)]
    asks = [(scripts[i % 3], gens[i % 4]) for i in range(16)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solo = [g.generate(preset._entries(text), gen).codes for text, gen in asks[:4]]
    for size, order in ((3, [0, 1, 2]), (16, [3, 1, 0, 2] + list(range(4, 16)))):
        batch = Dia2SlotBatch(g, size, 200)
        slots = {}
        for i in order[:size]:
            slots[batch.join(asks[i][1], None, entries=preset._entries(asks[i][0]))] = i
        done = {}
        with torch.inference_mode():
            while len(done) < len(slots):
                batch.step()
                for s, m in enumerate(batch.members):
                    if m is not None and m.finished:
                        done[s] = g.finish(m.run).codes
                        batch.leave(s)
        for s, i in slots.items():
            if i < 4:
                assert torch.equal(done[s], solo[i]), (size, i, s)
