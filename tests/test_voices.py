"""Saved voices: the store in fastdia.voices and `fastdia voice`, offline with the tiny-random codec."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta

import numpy as np
import pytest
import soundfile as sf

from fastdia.errors import FastDiaError, ScriptError, VoiceError
from fastdia.voices import BrokenVoiceWarning, Voice, VoiceStore, check_codec, voices_dir

CODEC = "dac-0123456789abcdef"  # the store only compares ids, so store tests need no codec
TEXT = "[S1] Hello there. [S2] Hi!"


def make_codes(frames: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1024, (frames, 9), dtype=np.int64)


@pytest.fixture
def store(tmp_path):
    return VoiceStore(tmp_path / "voices")


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "clip.wav"
    t = np.arange(44100) / 44100
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 44100)
    return path


def voice_cli(*args, home, env: dict | None = None):
    # The user's own voices folder and settings must never leak into (or out of) a test.
    base = {k: v for k, v in os.environ.items() if k != "FASTDIA_VOICES_DIR"}
    full_env = {**base, "OMP_NUM_THREADS": "1", "HOME": str(home), "XDG_DATA_HOME": str(home / "xdg"),
                **(env or {})}
    return subprocess.run([sys.executable, "-m", "fastdia.cli.main", "voice", *map(str, args)], check=False,
                          capture_output=True, text=True, timeout=300, env=full_env)


def assert_user_error(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastdia: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# -- store -------------------------------------------------------------------------------------


def test_round_trip(store):
    codes = make_codes()
    added = store.add("alice", codes, TEXT, CODEC, 44100, source="/some/dir/clip.wav")
    assert store.exists("alice") and store.path("alice") == store.directory / "alice.npz"

    got = store.get("alice")
    assert isinstance(got, Voice) and got.name == "alice"
    np.testing.assert_array_equal(got.codes, codes)
    assert got.codes.dtype == np.int64 and got.text == TEXT and got.codec == CODEC and got.sample_rate == 44100
    assert got.metadata == added.metadata
    assert got.metadata["source"] == "clip.wav" and got.metadata["frames"] == 20
    assert got.metadata["format_version"] == 1
    assert got.seconds == pytest.approx(20 * 512 / 44100, abs=1e-3)
    created = datetime.fromisoformat(got.metadata["created"])
    assert created.utcoffset() == timedelta(0)

    store.add("bob", make_codes(5, seed=1), "[S2] Yes.", CODEC, 44100)
    assert [v.name for v in store.list()] == ["alice", "bob"]
    assert store.remove("alice") == store.directory / "alice.npz"
    assert not store.exists("alice") and [v.name for v in store.list()] == ["bob"]


def test_voice_is_frozen(store):
    voice = store.add("alice", make_codes(), TEXT, CODEC, 44100)
    with pytest.raises(dataclasses.FrozenInstanceError):
        voice.text = "[S1] Something else."


def test_file_format_loads_without_pickle(store):
    store.add("alice", make_codes(), TEXT, CODEC, 44100)
    with np.load(store.path("alice"), allow_pickle=False) as data:
        assert sorted(data.files) == ["codes", "meta"]
        assert data["codes"].dtype == np.int64 and data["meta"].dtype == np.uint8
        meta = json.loads(data["meta"].tobytes().decode("utf-8"))
    assert meta["text"] == TEXT and meta["codec"] == CODEC and meta["sample_rate"] == 44100


def test_writes_are_atomic(store, monkeypatch):
    old = make_codes(seed=1)
    store.add("alice", old, TEXT, CODEC, 44100)
    store.add("alice", make_codes(seed=2), TEXT, CODEC, 44100, force=True)
    assert os.listdir(store.directory) == ["alice.npz"]

    # A failure while writing or renaming keeps the previous voice and leaves no temp file.
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    for target in ("np.savez", "os.replace"):
        with monkeypatch.context() as m:
            m.setattr(f"fastdia.voices.{target}", fail)
            with pytest.raises(OSError):
                store.add("alice", old, "[S1] Replaced.", CODEC, 44100, force=True)
        assert os.listdir(store.directory) == ["alice.npz"]
        np.testing.assert_array_equal(store.get("alice").codes, make_codes(seed=2))


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", ".hidden", "", "x" * 65, "-x", "café", "a..b",
                                  "a b", "name\n", None])
def test_invalid_names(store, name):
    for call in (lambda: store.add(name, make_codes(), TEXT, CODEC, 44100), lambda: store.get(name),
                 lambda: store.remove(name), lambda: store.path(name), lambda: store.exists(name)):
        with pytest.raises(VoiceError, match="invalid voice name"):
            call()
    assert not store.directory.exists()


@pytest.mark.parametrize("name", ["a", "x" * 64, "Alice_2.v-1", "0"])
def test_valid_names(store, name):
    store.add(name, make_codes(), TEXT, CODEC, 44100)
    assert store.get(name).name == name


def test_duplicate_needs_force(store):
    store.add("alice", make_codes(seed=1), TEXT, CODEC, 44100)
    with pytest.raises(VoiceError, match="voice 'alice' exists; use --force to replace it"):
        store.add("alice", make_codes(seed=2), TEXT, CODEC, 44100)
    np.testing.assert_array_equal(store.get("alice").codes, make_codes(seed=1))
    store.add("alice", make_codes(seed=2), "[S2] New.", CODEC, 44100, force=True)
    assert store.get("alice").text == "[S2] New."


@pytest.mark.parametrize("text", ["Hello there.", "[S3] Hello.", "", "   "])
def test_invalid_transcript_is_a_script_error(store, text):
    with pytest.raises(ScriptError, match="voice transcript"):
        store.add("alice", make_codes(), text, CODEC, 44100)
    assert not store.exists("alice")


@pytest.mark.parametrize("codes", [np.zeros(9, np.int64), np.zeros((4, 9), np.float32), np.full((4, 9), 1024),
                                   np.full((4, 9), -1), np.zeros((0, 9), np.int64), np.zeros((2, 4, 9), np.int64)])
def test_invalid_codes(store, codes):
    with pytest.raises(VoiceError, match="voice codes"):
        store.add("alice", codes, TEXT, CODEC, 44100)


def test_invalid_codec_and_rate(store):
    with pytest.raises(VoiceError, match="codec"):
        store.add("alice", make_codes(), TEXT, "", 44100)
    with pytest.raises(VoiceError, match="sample_rate"):
        store.add("alice", make_codes(), TEXT, CODEC, 0)


def test_unknown_name_says_what_exists(store):
    with pytest.raises(VoiceError, match="no voice named 'alice'.*fastdia voice add"):
        store.get("alice")
    store.add("bob", make_codes(), TEXT, CODEC, 44100)
    store.add("carol", make_codes(), TEXT, CODEC, 44100)
    with pytest.raises(VoiceError, match="no voice named 'alice'.*saved voices: bob, carol"):
        store.get("alice")
    with pytest.raises(VoiceError, match="no voice named 'alice'"):
        store.remove("alice")


def test_errors_are_fastdia_errors():
    assert issubclass(VoiceError, FastDiaError) and issubclass(VoiceError, ValueError)


def _write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_corrupt_files_are_named_and_do_not_break_list(store):
    store.add("good", make_codes(), TEXT, CODEC, 44100)
    d = store.directory
    (d / "bad.npz").write_bytes(b"\x00garbage\xff" * 20)
    (d / "cut.npz").write_bytes(store.path("good").read_bytes()[:200])
    _write_npz(d / "nometa.npz", codes=make_codes())
    bad_meta = np.frombuffer(b'{"text": 3}', dtype=np.uint8)
    _write_npz(d / "badmeta.npz", codes=make_codes(), meta=bad_meta)
    meta = np.frombuffer(json.dumps({"text": TEXT, "codec": CODEC, "sample_rate": 44100}).encode(), dtype=np.uint8)
    _write_npz(d / "badcodes.npz", codes=np.full((3, 9), 5000), meta=meta)

    broken_names = ["bad", "badcodes", "badmeta", "cut", "nometa"]
    for name in broken_names:
        with pytest.raises(VoiceError) as info:
            store.get(name)
        message = str(info.value)
        assert str(d / f"{name}.npz") in message and "corrupt" in message and "remove it" in message

    with pytest.warns(BrokenVoiceWarning) as caught:
        voices = store.list()
    assert [v.name for v in voices] == ["good"] and len(caught) == len(broken_names)
    broken: list = []
    assert [v.name for v in store.list(broken)] == ["good"]
    assert len(broken) == len(broken_names) and all(isinstance(e, VoiceError) for e in broken)

    for name in broken_names:
        store.remove(name)  # the fix the error message suggests must work on an unreadable file
    assert sorted(os.listdir(d)) == ["good.npz"]


def test_newer_format_asks_for_an_upgrade(store):
    meta = {"text": TEXT, "codec": CODEC, "sample_rate": 44100, "format_version": 99}
    store.directory.mkdir(parents=True)
    _write_npz(store.path("future"), codes=make_codes(),
               meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    with pytest.raises(VoiceError, match="upgrade fastdia"):
        store.get("future")


def test_list_ignores_temp_and_other_files(store):
    store.add("alice", make_codes(), TEXT, CODEC, 44100)
    (store.directory / ".alice.x1y2.tmp").write_bytes(b"half a write")
    (store.directory / "notes.txt").write_text("not a voice")
    assert [v.name for v in store.list()] == ["alice"]


def test_empty_store(tmp_path):
    assert VoiceStore(tmp_path / "missing").list() == []


def test_check_codec(store):
    voice = store.add("alice", make_codes(), TEXT, CODEC, 44100)
    check_codec(voice, CODEC)
    with pytest.raises(VoiceError, match=f"voice 'alice' was made with codec {CODEC} but this model uses codec "
                                         "dac-ffffffffffffffff; add it again for this model"):
        check_codec(voice, "dac-ffffffffffffffff")


def test_voices_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FASTDIA_VOICES_DIR", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert voices_dir() == tmp_path / "home" / ".local" / "share" / "fastdia" / "voices"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert voices_dir() == tmp_path / "home" / ".local" / "share" / "fastdia" / "voices"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert voices_dir() == tmp_path / "xdg" / "fastdia" / "voices"
    monkeypatch.setenv("FASTDIA_VOICES_DIR", str(tmp_path / "env"))
    assert voices_dir() == tmp_path / "env"
    assert voices_dir(tmp_path / "flag") == tmp_path / "flag"
    assert VoiceStore().directory == tmp_path / "env"
    assert VoiceStore(str(tmp_path / "flag")).directory == tmp_path / "flag"


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_add_list_show_remove(tmp_path, wav):
    from fastdia.codecs import DAC

    d = tmp_path / "voices"
    r = voice_cli("add", "alice", wav, "--text", TEXT, "--model", "tiny-random", "--device", "cpu",
                  "--voices-dir", d, home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"saved voice 'alice' (1.0 s, 87 frames) to {d / 'alice.npz'}"

    # The stored codes are exactly what the codec makes of the file.
    codec = DAC.from_pretrained("tiny-random", device="cpu", dtype="float32")
    wave, sr = sf.read(wav, dtype="float32")
    voice = VoiceStore(d).get("alice")
    np.testing.assert_array_equal(voice.codes, codec.encode(wave, sr))
    assert voice.codec == codec.codec_id and voice.sample_rate == codec.sample_rate == 44100
    assert voice.metadata["source"] == "clip.wav" and voice.text == TEXT

    r = voice_cli("list", "--voices-dir", d, home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "alice" in r.stdout and codec.codec_id in r.stdout and "[S1] Hello there." in r.stdout
    r = voice_cli("list", "--json", "--voices-dir", d, home=tmp_path)
    assert [v["name"] for v in json.loads(r.stdout)] == ["alice"]

    r = voice_cli("show", "alice", "--voices-dir", d, home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert TEXT in r.stdout and str(d / "alice.npz") in r.stdout and "87" in r.stdout
    r = voice_cli("show", "alice", "--json", "--voices-dir", d, home=tmp_path)
    info = json.loads(r.stdout)
    assert info["frames"] == 87 and info["text"] == TEXT and info["codec"] == codec.codec_id
    assert info["path"] == str(d / "alice.npz") and info["source"] == "clip.wav" and info["format_version"] == 1

    r = voice_cli("remove", "alice", "--voices-dir", d, home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (d / "alice.npz").exists()
    r = voice_cli("list", "--voices-dir", d, home=tmp_path)
    assert r.returncode == 0 and "fastdia voice add" in r.stdout


def test_cli_bad_inputs(tmp_path, wav):
    d = tmp_path / "voices"
    VoiceStore(d).add("alice", make_codes(), TEXT, CODEC, 44100)
    (tmp_path / "notes.txt").write_text("not audio")
    add = ("add", "--model", "tiny-random", "--device", "cpu", "--voices-dir", d)
    cases = [
        ((*add, "bob", tmp_path / "missing.wav", "--text", TEXT), ["does not exist"]),
        ((*add, "bob", tmp_path / "notes.txt", "--text", TEXT), ["notes.txt"]),
        ((*add, "../bob", wav, "--text", TEXT), ["invalid voice name"]),
        ((*add, "alice", wav, "--text", TEXT), ["voice 'alice' exists; use --force"]),
        ((*add, "bob", wav, "--text", "Hello there."), ["voice transcript", "[S1]"]),
        ((*add, "bob", wav, "--text", "[S3] Hello."), ["[S3]"]),
        (("show", "carol", "--voices-dir", d), ["no voice named 'carol'", "alice"]),
        (("remove", "carol", "--voices-dir", d), ["no voice named 'carol'", "alice"]),
    ]
    for args, needles in cases:
        assert_user_error(voice_cli(*args, home=tmp_path), *needles)
    assert os.listdir(d) == ["alice.npz"]


def test_cli_corrupt_file(tmp_path):
    d = tmp_path / "voices"
    VoiceStore(d).add("alice", make_codes(), TEXT, CODEC, 44100)
    (d / "bad.npz").write_bytes(b"garbage" * 10)
    r = voice_cli("list", "--voices-dir", d, home=tmp_path)
    assert r.returncode == 0 and "alice" in r.stdout and "bad.npz" in r.stderr and "Traceback" not in r.stderr
    assert_user_error(voice_cli("show", "bad", "--voices-dir", d, home=tmp_path), str(d / "bad.npz"), "remove it")


def test_cli_voices_dir_precedence(tmp_path):
    env_dir, flag_dir = tmp_path / "env", tmp_path / "flag"
    VoiceStore(env_dir).add("from-env", make_codes(), TEXT, CODEC, 44100)
    VoiceStore(flag_dir).add("from-flag", make_codes(), TEXT, CODEC, 44100)
    VoiceStore(tmp_path / "xdg" / "fastdia" / "voices").add("from-xdg", make_codes(), TEXT, CODEC, 44100)

    def names(*args, env=None):
        r = voice_cli("list", "--json", *args, home=tmp_path, env=env)
        assert r.returncode == 0, r.stderr
        return [v["name"] for v in json.loads(r.stdout)]

    assert names() == ["from-xdg"]
    assert names(env={"FASTDIA_VOICES_DIR": str(env_dir)}) == ["from-env"]
    assert names("--voices-dir", flag_dir, env={"FASTDIA_VOICES_DIR": str(env_dir)}) == ["from-flag"]
