"""Streaming: DACStream and Dia.stream equal the one-shot decode / generate (spec: within 1e-4)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fastdia.codecs import DAC
from fastdia.codecs.dac.codec import receptive_frames
from fastdia.codecs.dac.model import DACConfig
from fastdia.errors import AudioError, GenerationError, ScriptError

SCRIPT = "[S1] Hello there, this is a stream. [S2] Oh, hi! (laughs)"


@pytest.fixture(scope="module")
def codec():
    return DAC.from_pretrained("tiny-random", device="cpu", dtype="float32")


def test_receptive_field_of_the_released_codec():
    # +-9.9 frames for strides (8, 8, 4, 2), rounded up, plus one frame of safety.
    assert receptive_frames(DACConfig()) == 11


@pytest.mark.parametrize("chunk", [1, 5, 43, 200])
def test_dac_stream_equals_one_shot(codec, chunk):
    codes = np.random.default_rng(chunk).integers(0, 1024, (257, 9))
    ref = codec.decode(codes)
    stream, pieces, i = codec.stream(chunk), [], 0
    rng = np.random.default_rng(0)
    while i < len(codes):  # codes arrive in uneven pieces, some empty
        n = int(rng.integers(0, 13))
        pieces += stream.push(codes[i:i + n])
        i += n
    pieces += stream.finish()
    assert all(len(p) == chunk * 512 for p in pieces[:-1])
    got = np.concatenate(pieces)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_dac_stream_keeps_only_its_context(codec):
    stream = codec.stream(10)
    for _ in range(100):
        stream.push(np.zeros((7, 9), np.int64))
    # 700 frames pushed; what it holds is bounded by context + chunk, not the whole history.
    assert len(stream._codes) <= 2 * stream.context + 2 * 10 + 7


def test_dac_stream_bad_input(codec):
    with pytest.raises(AudioError):
        codec.stream(0)
    with pytest.raises(AudioError, match="shape"):
        codec.stream(4).push(np.zeros((3, 8), np.int64))


@pytest.mark.parametrize("chunk_seconds", [0.02, 0.5, 3.0])
@pytest.mark.parametrize("with_prompt", [False, True])
def test_stream_equals_generate(tts, chunk_seconds, with_prompt):
    kw = dict(seed=11, max_tokens=420)
    if with_prompt:
        kw.update(audio_prompt=np.random.default_rng(3).integers(0, 1024, (60, 9)), prompt_text="[S2] Before.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = tts.generate(SCRIPT, **kw)
        chunks = list(tts.stream(SCRIPT, chunk_seconds=chunk_seconds, **kw))
    frames = max(1, round(chunk_seconds * 44100 / 512))
    assert all(len(c) == frames * 512 for c in chunks[:-1])
    got = np.concatenate(chunks)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_stream_greedy_and_waveform_prompt(tts, tmp_path):
    import soundfile as sf

    wave = 0.3 * np.sin(np.linspace(0, 400, 44100)).astype(np.float32)
    sf.write(tmp_path / "p.wav", wave, 44100)
    kw = dict(temperature=0, max_tokens=300, audio_prompt=str(tmp_path / "p.wav"), prompt_text="[S1] A sine.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = tts.generate(SCRIPT, **kw)
        got = np.concatenate(list(tts.stream(SCRIPT, **kw)))
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_stream_is_lazy_but_checks_input_at_once(tts):
    with pytest.raises(ScriptError):
        tts.stream("no speaker tag")
    with pytest.raises(ScriptError, match="one script"):
        tts.stream(["[S1] a", "[S1] b"])
    with pytest.raises(GenerationError, match="chunk_seconds"):
        tts.stream(SCRIPT, chunk_seconds=0)
    with pytest.raises(GenerationError, match="unknown generation option"):
        tts.stream(SCRIPT, temprature=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chunks = tts.stream(SCRIPT, seed=1, max_tokens=200)
    first = next(chunks)  # a generator: work happens as chunks are asked for
    assert first.dtype == np.float32 and len(first) > 0
    chunks.close()


def test_synthesize_returns_speech(tts):
    from fastdia import Speech

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        speech = tts.synthesize(SCRIPT, seed=2, max_tokens=120)
        audio = tts.generate(SCRIPT, seed=2, max_tokens=120)
    assert isinstance(speech, Speech) and speech.sample_rate == 44100 and speech.timestamps == ()
    assert np.array_equal(speech.codes, tts.generate_codes(SCRIPT, seed=2, max_tokens=120))
    np.testing.assert_array_equal(speech.audio, audio)
    assert speech.duration == len(audio) / 44100
    with pytest.raises(ScriptError, match="one script"):
        tts.synthesize(["[S1] a"])
