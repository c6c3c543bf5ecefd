"""Audio I/O, resampling, downmix and loudness normalisation (real soundfile/soxr/pyloudnorm)."""

from __future__ import annotations

import os

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from fastdia.audio import (
    check_output_path,
    normalize_loudness,
    read_audio,
    resample,
    supported_write_extensions,
    to_mono,
    true_peak,
    write_audio,
)
from fastdia.errors import AudioError

SR = 44100
HAS_MP3 = "MP3" in sf.available_formats()


def sine(freq: float, seconds: float, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * sr / len(wave))


def speechlike(seconds: float, seed: int = 0, amp: float = 0.05) -> np.ndarray:
    """Noise bursts with a slow envelope: loud enough to pass BS.1770 gating, with peaks."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * np.arange(n) / SR) ** 2
    return (amp * envelope * rng.standard_normal(n)).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Read / write
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".wav", ".flac"])
def test_lossless_round_trip(tmp_path, ext):
    wave = sine(440, 0.5)
    path = write_audio(tmp_path / f"a{ext}", wave, SR)
    back, sr = read_audio(path)
    assert sr == SR and back.dtype == np.float32 and back.shape == wave.shape
    assert np.abs(back - wave).max() < 2 / 32768  # PCM_16
    assert sf.info(str(path)).subtype == "PCM_16"


@pytest.mark.parametrize("ext", [".ogg", pytest.param(".mp3", marks=pytest.mark.skipif(not HAS_MP3, reason="no MP3 in libsndfile"))])
def test_lossy_round_trip(tmp_path, ext):
    wave = sine(440, 1.0)
    path = write_audio(tmp_path / f"a{ext}", wave, SR)
    back, sr = read_audio(path)
    assert sr == SR and back.ndim == 1
    assert abs(len(back) - len(wave)) < 0.1 * SR  # encoders may add a little padding
    assert abs(dominant_freq(back, sr) - 440) < 3
    assert 0.3 < np.abs(back).max() < 0.7


def test_stereo_round_trip_and_to_mono(tmp_path):
    stereo = np.stack([sine(440, 0.2), sine(660, 0.2, amp=0.25)], axis=1)
    path = write_audio(tmp_path / "s.wav", stereo, SR)
    back, _ = read_audio(path)
    assert back.shape == stereo.shape
    mono = to_mono(back)
    assert mono.shape == (stereo.shape[0],) and mono.dtype == np.float32
    np.testing.assert_allclose(mono, stereo.mean(axis=1), atol=2 / 32768)
    assert to_mono(mono) is mono or np.array_equal(to_mono(mono), mono)
    with pytest.raises(AudioError, match=r"\[N\] or \[N, channels\]"):
        to_mono(np.zeros((2, 2, 2), np.float32))


def test_write_clips_and_accepts_torch(tmp_path):
    torch = pytest.importorskip("torch")
    loud = np.array([0.0, 1.7, -3.0, 0.5] * 100, np.float32)
    back, _ = read_audio(write_audio(tmp_path / "c.wav", torch.from_numpy(loud), SR))
    assert back.max() <= 1.0 and back.min() >= -1.0
    assert back[1] > 0.99 and back[2] < -0.99  # clipped, not wrapped around


def test_supported_extensions():
    exts = supported_write_extensions()
    assert {".wav", ".flac", ".ogg"} <= set(exts)
    assert (".mp3" in exts) == HAS_MP3


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


def test_read_errors(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav.*does not exist"):
        read_audio(tmp_path / "nope.wav")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError, match=r"notes\.wav.*supported formats are wav, flac, ogg, mp3"):
        read_audio(text)
    with pytest.raises(AudioError, match="is a folder"):
        read_audio(tmp_path)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), SR)
    with pytest.raises(AudioError, match="no samples"):
        read_audio(empty)


def test_write_errors(tmp_path):
    wave = sine(440, 0.1)
    with pytest.raises(AudioError, match=r"'\.xyz' is not a supported audio format; use one of \.wav, \.flac, \.ogg"):
        write_audio(tmp_path / "a.xyz", wave, SR)
    with pytest.raises(AudioError, match="no extension"):
        check_output_path(tmp_path / "noext")
    with pytest.raises(AudioError, match="does not exist"):
        write_audio(tmp_path / "missing" / "a.wav", wave, SR)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(AudioError, match="not a folder"):
        check_output_path(blocker / "a.wav")
    (tmp_path / "d.wav").mkdir()
    with pytest.raises(AudioError, match="is a folder"):
        check_output_path(tmp_path / "d.wav")
    with pytest.raises(AudioError, match="NaN"):
        write_audio(tmp_path / "n.wav", np.full(10, np.nan, np.float32), SR)
    with pytest.raises(AudioError, match="float"):
        write_audio(tmp_path / "i.wav", np.zeros(10, np.int16), SR)
    with pytest.raises(AudioError, match="non-empty"):
        write_audio(tmp_path / "e.wav", np.zeros(0, np.float32), SR)
    assert check_output_path(tmp_path / "OK.WAV") == tmp_path / "OK.WAV"  # case-insensitive


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(AudioError, match="not writable"):
            check_output_path(locked / "a.wav")
    finally:
        locked.chmod(0o700)


# ------------------------------------------------------------------------------------------
# Resampling
# ------------------------------------------------------------------------------------------


def test_resample_keeps_frequency_and_length():
    wave = sine(1000, 1.0, sr=16000)
    up = resample(wave, 16000, SR)
    assert up.dtype == np.float32
    assert abs(len(up) - SR) <= 1
    assert abs(dominant_freq(up, SR) - 1000) < 2
    assert abs(np.abs(up[1000:-1000]).max() - 0.5) < 0.01  # no gain change
    down = resample(up, SR, 24000)
    assert abs(len(down) - 24000) <= 1 and abs(dominant_freq(down, 24000) - 1000) < 2
    assert resample(wave, 16000, 16000) is wave or np.array_equal(resample(wave, 16000, 16000), wave)


def test_resample_stereo_layout():
    stereo = np.stack([sine(500, 0.5, sr=22050), sine(700, 0.5, sr=22050)], axis=1)
    out = resample(stereo, 22050, SR)
    assert out.shape[1] == 2 and abs(out.shape[0] - 2 * stereo.shape[0]) <= 1
    assert abs(dominant_freq(out[:, 1], SR) - 700) < 3


# ------------------------------------------------------------------------------------------
# Loudness
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [-16.0, -23.0])
def test_loudness_hits_target(target):
    wave = speechlike(3.0)
    out = normalize_loudness(wave, SR, target_lufs=target)
    measured = pyloudnorm.Meter(SR).integrated_loudness(out.astype(np.float64))
    assert abs(measured - target) < 0.5
    assert true_peak(out, SR) <= 10 ** (-1 / 20) * 1.001
    assert out.dtype == np.float32 and out.shape == wave.shape


def test_loudness_respects_peak_ceiling():
    wave = speechlike(2.0, amp=0.01)
    wave[SR // 2] = 0.9  # one big click: reaching -16 LUFS would push it far over full scale
    out = normalize_loudness(wave, SR, target_lufs=-10.0, true_peak_db=-1.0)
    assert true_peak(out, SR) <= 10 ** (-1 / 20) * 1.001
    assert np.abs(out).max() < 1.0


def test_loudness_edge_cases():
    silence = np.zeros(SR, np.float32)
    np.testing.assert_array_equal(normalize_loudness(silence, SR), silence)
    short = speechlike(0.1, amp=0.01)  # below BS.1770's 0.4 s block: RMS fallback
    out = normalize_loudness(short, SR)
    assert out.shape == short.shape and np.isfinite(out).all()
    assert np.abs(out).max() > np.abs(short).max()  # it was made louder
    assert true_peak(out, SR) <= 10 ** (-1 / 20) * 1.001
    stereo = np.stack([speechlike(2.0, 1), speechlike(2.0, 2)], axis=1)
    out = normalize_loudness(stereo, SR)
    assert out.shape == stereo.shape
    assert abs(pyloudnorm.Meter(SR).integrated_loudness(out.astype(np.float64)) + 16.0) < 0.5
    assert normalize_loudness(np.zeros(0, np.float32), SR).shape == (0,)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux procfs")
def test_unwritable_folder_even_for_root():
    """procfs refuses new files to everyone, root included: the check must really try."""
    with pytest.raises(AudioError, match="not writable"):
        check_output_path("/proc/fastdia-out.wav")
