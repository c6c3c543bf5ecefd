"""`fastdia say` streaming (`-o -`, `--stream`), saved voices in use, and the input hardening, as a user runs them."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from fastdia.errors import GenerationError, ScriptError
from fastdia.voices import VoiceStore

SCRIPT = "[S1] Streaming is here. [S2] Finally! (laughs)"
BASE = ("--model", "tiny-random", "--seed", "5", "--max-tokens", "200")


def run(*args, stdin: str | None = None, text: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fastdia.cli.main", *args], capture_output=True, text=text,
                          input=stdin, timeout=600, env=env)


def fails_cleanly(r, words: str) -> None:
    err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode()
    lines = [ln for ln in err.splitlines() if ln.startswith("fastdia: error:")]
    assert r.returncode == 2, err
    assert len(lines) == 1 and words in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def one_shot(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "one.wav"
    r = run("say", SCRIPT, "-o", str(out), *BASE, "-q")
    assert r.returncode == 0, r.stderr
    return sf.read(out, dtype="int16")[0].astype(int)


def test_stdout_wav_stream(one_shot):
    r = run("say", SCRIPT, "-o", "-", *BASE, text=False)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout[:4] == b"RIFF" and r.stdout[8:12] == b"WAVE"
    data, sr = sf.read(io.BytesIO(r.stdout), dtype="int16", frames=len(one_shot))
    assert sr == 44100 and len(data) == len(one_shot)
    assert np.abs(data.astype(int) - one_shot).max() <= 1  # float rounding of the windows, in 16 bits
    assert len(r.stdout) == 44 + 2 * len(one_shot)  # nothing but the WAV on stdout
    err = r.stderr.decode()
    assert "wrote stdout" in err and "first audio after" in err and "generating" in err  # progress on stderr


def test_stdout_closed_early_stops_quietly():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fastdia.cli.main", "say", SCRIPT, "-o", "-", "--model", "tiny-random",
                             "--max-tokens", "3000", "--chunk-seconds", "0.1", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        head = proc.stdout.read(2000)  # a player that stops after a moment
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=300) == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert head[:4] == b"RIFF" and "Traceback" not in err and "pipe was closed" in err


def test_stream_to_file(one_shot, tmp_path):
    for ext in ("wav", "flac"):
        out = tmp_path / f"s.{ext}"
        r = run("say", SCRIPT, "-o", str(out), *BASE, "--stream", "--chunk-seconds", "0.2", "-q")
        assert r.returncode == 0, r.stderr
        data = sf.read(out, dtype="int16")[0].astype(int)
        assert len(data) == len(one_shot) and np.abs(data - one_shot).max() <= 1


def test_stream_flags_are_checked_first():
    fails_cleanly(run("say", SCRIPT, "-o", "-", *BASE, "--loudness", "-16"), "--loudness")
    fails_cleanly(run("say", SCRIPT, "-o", "x.txt", *BASE, "--stream"), "not a supported audio format")


# ----------------------------------------------------------------------------- saved voices


@pytest.fixture(scope="module")
def voice_files(tmp_path_factory, tts):
    d = tmp_path_factory.mktemp("voices")
    rng = np.random.default_rng(1)
    wave = (0.2 * rng.standard_normal(44100)).astype(np.float32)
    sf.write(d / "alice.wav", wave, 44100)
    sf.write(d / "bob.wav", wave[::-1].copy(), 44100)
    store = VoiceStore(d / "store")
    for name in ("alice", "bob"):
        w, sr = sf.read(d / f"{name}.wav", dtype="float32")
        store.add(name, tts.encode(w, sr), f"[S1] I am {name}.", tts.codec.codec_id, 44100)
    return d


def test_voice_equals_audio_prompt_python(tts, voice_files):
    store = str(voice_files / "store")
    tts.voices_dir = store
    try:
        a = tts.generate_codes(SCRIPT, voice="alice", seed=3, max_tokens=300)
        b = tts.generate_codes(SCRIPT, audio_prompt=str(voice_files / "alice.wav"), prompt_text="[S1] I am alice.",
                               seed=3, max_tokens=300)
        assert np.array_equal(a, b)
        c = tts.generate_codes(SCRIPT, voice=VoiceStore(store).get("alice"), seed=3, max_tokens=300)
        assert np.array_equal(a, c)
        # Per speaker: bob's [S1] transcript is retagged [S2], after alice's.
        d = tts.generate_codes(SCRIPT, voice={"S2": "bob", "S1": "alice"}, seed=3, max_tokens=400)
        e = tts.generate_codes(SCRIPT, seed=3, max_tokens=400, prompt_text="[S1] I am alice. [S2] I am bob.",
                               audio_prompt=np.concatenate([VoiceStore(store).get("alice").codes,
                                                            VoiceStore(store).get("bob").codes]))
        assert np.array_equal(d, e)
        with pytest.raises(GenerationError, match="not both"):
            tts.generate_codes(SCRIPT, voice="alice", audio_prompt=str(voice_files / "alice.wav"))
        with pytest.raises(GenerationError, match="S1 and S2"):
            tts.generate_codes(SCRIPT, voice={"S3": "alice"})
        with pytest.raises(Exception, match="nobody"):
            tts.generate_codes(SCRIPT, voice="nobody")
    finally:
        tts.voices_dir = None


def test_voice_from_another_codec_is_refused(tts, voice_files, tmp_path):
    store = VoiceStore(tmp_path)
    store.add("other", np.zeros((10, 9), np.int64), "[S1] Hm.", "dac-0000000000000000", 44100)
    tts.voices_dir = str(tmp_path)
    try:
        with pytest.raises(Exception, match="codec"):
            tts.generate_codes(SCRIPT, voice="other")
    finally:
        tts.voices_dir = None


def test_voice_cli_say(voice_files, tmp_path):
    store = str(voice_files / "store")
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    r = run("say", SCRIPT, "-o", str(a), *BASE, "--voice", "alice", "--voices-dir", store, "-q")
    assert r.returncode == 0, r.stderr
    r = run("say", SCRIPT, "-o", str(b), *BASE, "--audio-prompt", str(voice_files / "alice.wav"),
            "--prompt-text", "[S1] I am alice.", "-q")
    assert r.returncode == 0, r.stderr
    assert a.read_bytes() == b.read_bytes()
    r = run("say", SCRIPT, "-o", str(a), *BASE, "--voice", "S1=alice", "--voice", "S2=bob", "--voices-dir", store,
            "-q")
    assert r.returncode == 0, r.stderr
    fails_cleanly(run("say", SCRIPT, "-o", str(a), *BASE, "--voice", "nobody", "--voices-dir", store), "nobody")
    fails_cleanly(run("say", SCRIPT, "-o", str(a), *BASE, "--voice", "S3=alice", "--voices-dir", store), "S1 or S2")
    fails_cleanly(run("say", SCRIPT, "-o", str(a), *BASE, "--voice", "alice", "--voices-dir", store,
                      "--audio-prompt", str(voice_files / "alice.wav")), "not both")


# ----------------------------------------------------------------------------- input hardening


def test_any_int_seed(tts, tmp_path):
    big = tts.generate_codes(SCRIPT, seed=2**70, max_tokens=60)
    assert np.array_equal(big, tts.generate_codes(SCRIPT, seed=2**70 % 2**63, max_tokens=60))
    neg = tts.generate_codes(SCRIPT, seed=-1, max_tokens=60)
    assert np.array_equal(neg, tts.generate_codes(SCRIPT, seed=2**63 - 1, max_tokens=60))
    r = run("say", SCRIPT, "-o", str(tmp_path / "seed.wav"), "--model", "tiny-random", "--seed", str(2**70), "--max-tokens", "60", "-q")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("text, words", [
    ("[S1] \ud83d hi", "lone surrogate U+D83D"),
    ("[S1] a \x01 b", "control character U+0001"),
    ("[S1] a \x02 b", "control character U+0002"),
    ("[S1] bell \x07", "control character U+0007"),
    ("[S1] del \x7f", "control character U+007F"),
])
def test_bad_characters(tts, text, words):
    with pytest.raises(ScriptError, match=re.escape(words)):
        tts.generate_codes(text)
    with pytest.raises(ScriptError, match=re.escape(words)):
        tts.stream(text)


def test_bad_characters_cli(tmp_path):
    fails_cleanly(run("say", "[S1] a \x01 b", "-o", str(tmp_path / "x.wav"), "--model", "tiny-random"),
                  "control character U+0001")
    (tmp_path / "s.txt").write_bytes("[S1] \x02 sneaky".encode())
    fails_cleanly(run("say", "--input", str(tmp_path / "s.txt"), "-o", str(tmp_path / "x.wav"), "--model",
                      "tiny-random"), "control character U+0002")


def test_byte_order_mark_is_dropped(tts, tmp_path):
    plain = tts.generate_codes(SCRIPT, seed=2, max_tokens=60)
    assert np.array_equal(plain, tts.generate_codes("\ufeff" + SCRIPT, seed=2, max_tokens=60))
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + SCRIPT.encode())
    r = run("say", "--input", str(tmp_path / "bom.txt"), "-o", str(tmp_path / "bom.wav"), "--model",
            "tiny-random", "--seed", "2", "--max-tokens", "60", "-q")
    assert r.returncode == 0, r.stderr


def test_max_tokens_too_small_says_so(tts, tmp_path):
    with pytest.raises(GenerationError, match="max_tokens=16 is too small.*at least 17"):
        tts.generate_codes(SCRIPT, max_tokens=16)
    r = run("say", SCRIPT, "-o", str(tmp_path / "x.wav"), "--model", "tiny-random", "--max-tokens", "16")
    fails_cleanly(r, "max_tokens=16 is too small")
    assert "generating" not in r.stderr  # no progress bar before the check
    assert "audio prompt" not in r.stderr
