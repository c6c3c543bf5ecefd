"""Audio I/O and processing: read, write, downmix, resample, loudness normalisation.

Waveforms are np.float32 in [-1, 1], shaped [N] (mono) or [N, channels] (soundfile's layout).
Every user-caused failure (missing file, not audio, unsupported extension, unwritable folder) is
an `AudioError` that names the file and says what would work.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AudioError, GenerationError

# Extension -> (soundfile format, subtype). PCM_16 for wav/flac because every player reads it.
_WRITE_FORMATS: dict[str, tuple[str, str]] = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}
READ_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


def check_chunk_seconds(value: Any, name: str = "chunk_seconds") -> float:
    """A stream's piece length in seconds, checked: a number in (0, 60], else GenerationError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 60:
        raise GenerationError(f"{name} must be a number in (0, 60], got {value!r}")
    return value


def ramp_chunk(done: int, first: int, largest: int) -> int:
    """The length of a stream's next piece after `done` frames: `first`, then as long as all the
    audio before it, up to `largest` (first, first, 2 first, 4 first, ...): a long stream is decoded
    in a few long pieces. The price is for a listener who starts playing at the first piece: a
    piece of d seconds after A seconds of audio is in time only while generation runs at least
    (A + d - first) / A times real time (0.5, 0.5, 1, 2 s pieces: up to 1.75x), where pieces of a
    fixed length need only 1x. The split depends on the stream alone, never on timing, so a
    stream's audio is the same in any company."""
    return min(largest, max(first, done))


def supported_write_extensions() -> tuple[str, ...]:
    """Extensions `write_audio` can produce with this libsndfile build."""
    import soundfile as sf

    formats = sf.available_formats()
    return tuple(ext for ext, (fmt, _) in _WRITE_FORMATS.items() if fmt in formats)


def read_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read an audio file.

    Args:
        path: a wav, flac, ogg or mp3 file (anything libsndfile reads also works).

    Returns:
        (wave, sample_rate): np.float32 [N] for mono files, [N, channels] otherwise.

    Raises:
        AudioError: the file is missing, a folder, unreadable, not audio, or holds no samples.
    """
    import soundfile as sf

    p = Path(path).expanduser()
    if not p.exists():
        raise AudioError(f"audio file {str(p)!r} does not exist")
    if p.is_dir():
        raise AudioError(f"{str(p)!r} is a folder, not an audio file")
    try:
        wave, sample_rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(
            f"cannot read {str(p)!r} as audio ({_first_line(exc)}); supported formats are "
            f"{', '.join(e.lstrip('.') for e in READ_EXTENSIONS)}"
        ) from None
    except OSError as exc:
        raise AudioError(f"cannot open {str(p)!r}: {exc.strerror or exc}") from None
    if wave.shape[0] == 0:
        raise AudioError(f"audio file {str(p)!r} holds no samples")
    if wave.shape[1] == 1:
        wave = wave[:, 0]
    return np.ascontiguousarray(wave, dtype=np.float32), int(sample_rate)


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Average channels: [N, C] -> [N]; [N] is returned as float32.

    Args:
        wave: [N] or [N, channels].

    Returns:
        np.float32 [N].
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 1:
        return wave
    if wave.ndim == 2:
        return wave.mean(axis=1, dtype=np.float32)
    raise AudioError(f"a waveform must be [N] or [N, channels]; got shape {list(wave.shape)}")


def resample(wave: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Resample with soxr (high quality, linear phase).

    Args:
        wave: [N] or [N, channels].
        sr_from: rate of `wave` in Hz.
        sr_to: wanted rate in Hz.

    Returns:
        np.float32 with about N * sr_to / sr_from frames (same channel layout).
    """
    import soxr

    wave = np.asarray(wave, dtype=np.float32)
    if sr_from <= 0 or sr_to <= 0:
        raise AudioError(f"sample rates must be positive; got {sr_from} -> {sr_to}")
    if sr_from == sr_to or wave.shape[0] == 0:
        return wave
    return np.asarray(soxr.resample(wave, sr_from, sr_to, quality="HQ"), dtype=np.float32)


def _can_create_in(folder: Path) -> bool:
    """Really try: permission bits say nothing for root or read-only file systems."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fastdia-probe-"):
            return True
    except OSError:
        return False


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Validate an output path before any work is done, so a CLI can fail fast.

    Args:
        path: where audio will be written; the extension picks the format.

    Returns:
        The path as a `Path`.

    Raises:
        AudioError: unsupported extension, missing folder, or a folder that cannot be written.
    """
    p = Path(path).expanduser()
    ext = p.suffix.lower()
    supported = supported_write_extensions()
    if ext not in supported:
        shown = f"{ext!r}" if ext else "no extension"
        raise AudioError(
            f"cannot write {str(p)!r}: {shown} is not a supported audio format; use one of "
            f"{', '.join(supported)}"
        )
    if p.is_dir():
        raise AudioError(f"cannot write {str(p)!r}: it is a folder")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.exists():
        raise AudioError(f"cannot write {str(p)!r}: folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise AudioError(f"cannot write {str(p)!r}: {str(folder)!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or not _can_create_in(folder):
        raise AudioError(f"cannot write {str(p)!r}: folder {str(folder)!r} is not writable")
    if p.exists() and not os.access(p, os.W_OK):
        raise AudioError(f"cannot write {str(p)!r}: the file exists and is read-only")
    return p


def write_audio(path: str | os.PathLike[str], wave: Any, sample_rate: int) -> Path:
    """Write audio; the format follows the extension (wav, flac, ogg, mp3).

    Samples are clipped to [-1, 1] first: integer PCM and lossy encoders would otherwise wrap
    around or distort on overs.

    Args:
        path: output file.
        wave: float [N] or [N, channels] (numpy or torch).
        sample_rate: Hz.

    Returns:
        The path written.
    """
    import soundfile as sf

    p = check_output_path(path)
    if hasattr(wave, "detach"):  # torch tensor, without importing torch here
        wave = wave.detach().float().cpu().numpy()
    data = np.asarray(wave)
    if data.dtype.kind != "f":
        raise AudioError(f"audio to write must be float samples in [-1, 1]; got dtype {data.dtype}")
    if data.ndim not in (1, 2) or data.shape[0] == 0:
        raise AudioError(f"audio to write must be a non-empty [N] or [N, channels] array; got shape {list(data.shape)}")
    if not np.isfinite(data).all():
        raise AudioError(f"cannot write {str(p)!r}: the audio contains NaN or infinite samples")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"sample_rate must be a positive integer; got {sample_rate!r}")
    fmt, subtype = _WRITE_FORMATS[p.suffix.lower()]
    data = np.clip(data, -1.0, 1.0).astype(np.float32)
    try:
        sf.write(str(p), data, int(sample_rate), format=fmt, subtype=subtype)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise AudioError(
            f"cannot write {str(p)!r} as {fmt}/{subtype} at {sample_rate} Hz: {_first_line(exc)}"
        ) from None
    return p


class AudioStreamWriter:
    """Write audio chunk by chunk as it is generated: to a file (any supported format, through
    libsndfile, which completes the header on close) or to a binary pipe as 16-bit PCM WAV.

    A pipe cannot be rewound to fill in the header's sizes, so they are written as 0xFFFFFFFF,
    the "unknown length" that players reading a stream accept (aplay, ffplay, sox).

    Args:
        target: an output path (checked like `check_output_path`), or a writable binary file
            object such as `sys.stdout.buffer`.
        sample_rate: Hz.
    """

    def __init__(self, target: str | os.PathLike[str] | Any, sample_rate: int) -> None:
        import soundfile as sf

        self.sample_rate, self.frames = int(sample_rate), 0
        self._file = self._pipe = None
        if hasattr(target, "write"):
            self._pipe = target
            self._pipe.write(_wav_header(self.sample_rate))
            self._pipe.flush()
        else:
            path = check_output_path(target)
            fmt, subtype = _WRITE_FORMATS[path.suffix.lower()]
            try:
                self._file = sf.SoundFile(str(path), "w", self.sample_rate, 1, subtype, format=fmt)
            except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
                raise AudioError(f"cannot write {str(path)!r}: {_first_line(exc)}") from None
            self.path = path

    def write(self, chunk: np.ndarray) -> None:
        """Append float samples in [-1, 1] (clipped) and push them out at once."""
        data = np.clip(np.asarray(chunk, dtype=np.float32), -1.0, 1.0)
        if self._pipe is not None:
            # libsndfile's float -> PCM16 rule, so a piped WAV has the samples a file would have.
            pcm = np.clip(np.floor(data.astype(np.float64) * 32768.0), -32768, 32767)
            self._pipe.write(pcm.astype("<i2").tobytes())
            self._pipe.flush()
        else:
            self._file.write(data)
            self._file.flush()
        self.frames += data.shape[0]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._pipe is not None:
            self._pipe.flush()

    def __enter__(self) -> "AudioStreamWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wav_header(sample_rate: int) -> bytes:
    """A 44-byte mono 16-bit PCM WAV header with unknown (maximal) sizes, for streams."""
    import struct

    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", unknown))


def true_peak(wave: np.ndarray, sample_rate: int, oversample: int = 4) -> float:
    """Approximate true peak (linear): the sample peak of the signal oversampled 4x (BS.1770 annex 2)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.shape[0] == 0:
        return 0.0
    up = resample(wave, sample_rate, sample_rate * oversample)
    return float(max(np.abs(up).max(initial=0.0), np.abs(wave).max(initial=0.0)))


def normalize_loudness(
    wave: np.ndarray,
    sample_rate: int,
    target_lufs: float = -16.0,
    true_peak_db: float = -1.0,
) -> np.ndarray:
    """Bring integrated loudness (ITU-R BS.1770, via pyloudnorm) to `target_lufs`, then make
    sure the true peak stays below `true_peak_db` dBTP by lowering the gain if needed.

    Silence is returned unchanged. Clips shorter than the 0.4 s gating block cannot be measured
    by BS.1770, so their gain comes from the RMS level instead (a rough loudness proxy).

    Args:
        wave: float [N] or [N, channels].
        sample_rate: Hz.
        target_lufs: wanted integrated loudness.
        true_peak_db: ceiling for the (4x oversampled) peak, in dB relative to full scale.

    Returns:
        np.float32 of the same shape.
    """
    import pyloudnorm

    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim not in (1, 2):
        raise AudioError(f"a waveform must be [N] or [N, channels]; got shape {list(wave.shape)}")
    if wave.shape[0] == 0 or not np.any(wave):
        return wave
    if not np.isfinite(wave).all():
        raise AudioError("cannot normalise loudness: the audio contains NaN or infinite samples")
    loudness = -np.inf
    if wave.shape[0] >= int(0.4 * sample_rate) + 1:
        meter = pyloudnorm.Meter(sample_rate)
        loudness = float(meter.integrated_loudness(wave.astype(np.float64)))
    if np.isfinite(loudness):
        gain_db = target_lufs - loudness
    else:
        # Too short for BS.1770, or everything gated away (near-silence): use RMS in dBFS,
        # which for speech sits within a few dB of LUFS.
        rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
        if rms < 1e-6:  # about -120 dBFS: effectively silent, amplifying would only add noise
            return wave
        gain_db = target_lufs - 20.0 * np.log10(rms)
    out = wave * np.float32(10.0 ** (gain_db / 20.0))
    ceiling = 10.0 ** (true_peak_db / 20.0)
    peak = true_peak(out, sample_rate)
    if peak > ceiling:
        out = out * np.float32(ceiling / peak)
    return out.astype(np.float32, copy=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = [
    "READ_EXTENSIONS",
    "check_output_path",
    "normalize_loudness",
    "read_audio",
    "resample",
    "supported_write_extensions",
    "to_mono",
    "true_peak",
    "write_audio",
]
