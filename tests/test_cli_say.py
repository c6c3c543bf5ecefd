"""`fastdia say` end to end with the tiny-random preset, as a user runs it (real files, subprocess)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from fastdia import Dia

SCRIPT = "[S1] Hello there, this is a test. [S2] Oh, hello! (laughs)"
MAX_TOKENS = 160


def say(*args, stdin: str | None = None):
    # One thread: tiny models gain nothing from more, and a busy machine makes thread pools spin.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fastdia.cli.main", "say", *args], capture_output=True, text=True,
                          input=stdin, timeout=600, env=env)


@pytest.fixture(scope="module")
def tiny():
    return Dia.from_pretrained("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("say") / "out.wav"
    r = say(SCRIPT, "-o", str(out), "--model", "tiny-random", "--seed", "7", "--max-tokens", str(MAX_TOKENS))
    assert r.returncode == 0, r.stderr
    return out, r


def test_say_writes_44k_mono_of_the_generated_length(first_run, tiny):
    out, r = first_run
    info = sf.info(str(out))
    assert info.samplerate == 44100 and info.channels == 1
    codes = tiny.generate_codes(SCRIPT, seed=7, max_tokens=MAX_TOKENS)
    assert info.frames == len(codes) * 512 > 0
    assert "random weights" in r.stderr  # says once that the preset makes noise
    assert r.stderr.count("random weights") == 1
    assert "wrote" in r.stderr and "realtime" in r.stderr


def test_same_seed_same_bytes(first_run, tmp_path):
    out, _ = first_run
    again = tmp_path / "again.wav"
    r = say(SCRIPT, "-o", str(again), "--model", "tiny-random", "--seed", "7", "--max-tokens", str(MAX_TOKENS), "-q")
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(again.read_bytes()).digest()


def test_script_from_file_and_stdin(tmp_path):
    script_file = tmp_path / "script.txt"
    script_file.write_text(SCRIPT)
    a, b = tmp_path / "a.flac", tmp_path / "b.flac"
    common = ["--model", "tiny-random", "--seed", "3", "--max-tokens", "80", "-q"]
    assert say("--input", str(script_file), "-o", str(a), *common).returncode == 0
    assert say("--input", "-", "-o", str(b), *common, stdin=SCRIPT).returncode == 0
    wa, sra = sf.read(str(a))
    wb, srb = sf.read(str(b))
    assert sra == srb == 44100 and np.array_equal(wa, wb) and len(wa) > 0


def test_voice_cloning_returns_only_new_audio(first_run, tiny, tmp_path):
    prompt_file, _ = first_run  # a 44.1 kHz wav made by the first run serves as the voice
    prompt_text = "[S1] Earlier words."
    out = tmp_path / "clone.wav"
    r = say("[S2] And now the new part.", "-o", str(out), "--model", "tiny-random", "--seed", "5",
            "--max-tokens", "400", "--audio-prompt", str(prompt_file), "--prompt-text", prompt_text, "-q")
    assert r.returncode == 0, r.stderr
    wave, sr = sf.read(str(prompt_file), dtype="float32")
    prompt_codes = tiny.encode(wave, sr)
    expected = tiny.generate_codes("[S2] And now the new part.", audio_prompt=prompt_codes, prompt_text=prompt_text,
                                   seed=5, max_tokens=400)
    n = sf.info(str(out)).frames
    assert n == len(expected) * 512  # the prompt's own audio is not in the output
    # Same through the library from the path, and with a waveform + sample_rate.
    from_path = tiny.generate_codes("[S2] And now the new part.", audio_prompt=str(prompt_file),
                                    prompt_text=prompt_text, seed=5, max_tokens=400)
    from_wave = tiny.generate_codes("[S2] And now the new part.", audio_prompt=wave, sample_rate=sr,
                                    prompt_text=prompt_text, seed=5, max_tokens=400)
    np.testing.assert_array_equal(from_path, expected)
    np.testing.assert_array_equal(from_wave, expected)


def test_prompt_is_resampled(tiny):
    sr = 16000
    t = np.arange(sr) / sr
    wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    codes = tiny.encode(wave, sr)
    assert codes.shape == (87, 9) and codes.dtype == np.int64  # 1 s at 44.1 kHz -> ceil(44100/512)


def test_generate_returns_waveform(tiny, tmp_path):
    import warnings

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        audio = tiny.generate(SCRIPT, seed=1, max_tokens=60)
        batch = tiny.generate([SCRIPT, "[S1] Hi."], seed=1, max_tokens=60)
    codes = tiny.generate_codes(SCRIPT, seed=1, max_tokens=60)
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) == len(codes) * 512
    np.testing.assert_allclose(batch[0], audio, atol=1e-5)  # batched decode == alone
    path = tiny.save_audio(tmp_path / "x.ogg", audio, loudness=-20.0)
    assert sf.info(str(path)).samplerate == 44100
    np.testing.assert_allclose(tiny.decode(codes), audio, atol=1e-6)


# ------------------------------------------------------------------------------------- bad input


def _fails_cleanly(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fastdia: error:"), r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_bad_inputs(tmp_path):
    out = str(tmp_path / "o.wav")
    base = ["--model", "tiny-random", "-q"]
    _fails_cleanly(say("[S1] hi", "-o", out, "--audio-prompt", str(tmp_path / "missing.wav"), *base), "does not exist")
    _fails_cleanly(say("[S1] hi", "-o", out, "--audio-prompt", str(tmp_path), *base), "folder")
    junk = tmp_path / "junk.wav"
    junk.write_text("this is not audio")
    _fails_cleanly(say("[S1] hi", "-o", out, "--audio-prompt", str(junk), *base), "cannot read", "junk.wav")
    _fails_cleanly(say("[S1] hi", "-o", str(tmp_path / "o.xyz"), *base), ".xyz", ".wav")
    _fails_cleanly(say("[S1] hi", "-o", "/proc/fastdia.wav", *base), "not writable")
    _fails_cleanly(say("[S1] hi", "-o", str(tmp_path / "nope" / "o.wav"), *base), "does not exist")
    _fails_cleanly(say("", "-o", out, *base), "empty")
    _fails_cleanly(say("Hello", "-o", out, *base), "[S1]")
    _fails_cleanly(say("[S1][S2][S1]", "-o", out, *base), "nothing to say")  # tags only: was an IndexError
    _fails_cleanly(say("-o", out, *base), "no script")
    _fails_cleanly(say("[S1] hi", "-o", out, "--prompt-text", "[S1] x", *base), "--audio-prompt")


def test_too_long_prompt(tmp_path):
    long_prompt = tmp_path / "long.wav"
    sf.write(str(long_prompt), np.zeros(44100 * 3, np.float32), 44100)
    r = say("[S1] hi", "-o", str(tmp_path / "o.wav"), "--model", "tiny-random", "-q", "--max-tokens", "200",
            "--audio-prompt", str(long_prompt), "--prompt-text", "[S1] silence")
    _fails_cleanly(r, "does not fit", "max_tokens")


def test_hub_id_offline_names_the_ways_out(tmp_path):
    r = say("[S1] hi", "-o", str(tmp_path / "o.wav"), "--model", "nari-labs/Dia-1.6B-0626", "-q")
    _fails_cleanly(r, "--model PATH", "--model tiny-random")


def test_an_unseeded_run_prints_its_seed_with_verbose_and_the_seed_makes_it_again(tmp_path):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    r = say("[S1] Again, please.", "-o", str(a), "--model", "tiny-random", "--max-tokens", "60", "-q", "-v")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("fastdia: seed "))
    seed = int(line.split()[2])
    r = say("[S1] Again, please.", "-o", str(b), "--model", "tiny-random", "--max-tokens", "60", "-q",
            "--seed", str(seed))
    assert r.returncode == 0, r.stderr
    assert a.read_bytes() == b.read_bytes()
