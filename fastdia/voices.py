"""Saved voices: audio encoded once into codec codes, kept with its transcript, reused by name.

One file per voice, `<voices dir>/<name>.npz`: `codes` (int64 [frames, codebooks]) and `meta`, JSON
as uint8 so that it loads with allow_pickle=False. Codes mean nothing to another codec, so the
codec's id is kept too.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .errors import VoiceError, VoiceNotFoundError

FORMAT_VERSION = 1
AUDIO_RATE = 24000  # the kept waveform's rate (Mimi's): another codec encodes the voice from it
CODEBOOK_SIZE = 1024  # DAC decoding silently replaces codes outside 0..1023, so they are refused here
DAC_HOP_LENGTH = 512
ADD_HINT = 'fastdia voice add NAME AUDIO --text "[S1] the exact words spoken in AUDIO"'

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ZIP_MAGIC = b"PK\x03\x04"


class BrokenVoiceWarning(UserWarning):
    """A file in the voices folder could not be read and was left out of `VoiceStore.list`."""


# eq=False: the generated __eq__ and __hash__ would compare numpy arrays, which raises.
@dataclass(frozen=True, eq=False)
class Voice:
    """A saved voice.

    Attributes:
        name: its name in the store.
        codes: np.int64 [frames, codebooks], time-major codec codes of the audio.
        text: the exact transcript of the audio, with speaker tags ("[S1] Hello there.").
        codec: id of the codec that made `codes` (`DAC.codec_id`).
        sample_rate: the codec's sample rate in Hz.
        metadata: created (ISO time, UTC), source (file name), seconds, frames, format_version.
    """

    name: str
    codes: np.ndarray
    text: str
    codec: str
    sample_rate: int
    metadata: dict = field(default_factory=dict)
    audio: np.ndarray | None = None  # float32 mono at AUDIO_RATE, for codecs other than `codec` (Dia2's Mimi)

    @property
    def seconds(self) -> float:
        """Length of the encoded audio in seconds."""
        return float(self.metadata.get("seconds", len(self.codes) * DAC_HOP_LENGTH / self.sample_rate))


def voices_dir(override: str | os.PathLike | None = None) -> Path:
    """The folder that holds saved voices.

    Args:
        override: a folder to use instead (the CLI's --voices-dir).

    Returns:
        `override`, else $FASTDIA_VOICES_DIR, else $XDG_DATA_HOME/fastdia/voices, else
        ~/.local/share/fastdia/voices.
    """
    if override is not None and os.fspath(override) != "":
        return Path(override).expanduser()
    env = os.environ.get("FASTDIA_VOICES_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    # The XDG spec says to ignore relative values: they would change with the working directory.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "fastdia" / "voices"


def check_codec(voice: Voice, codec_id: str) -> None:
    """Raise VoiceError if `voice` was encoded by another codec than the one that will use it.

    Args:
        voice: the saved voice.
        codec_id: `codec_id` of the model's codec.
    """
    if voice.codec != codec_id:
        raise VoiceError(f"voice {voice.name!r} was made with codec {voice.codec} but this model uses codec "
                         f"{codec_id}; add it again for this model")


class VoiceStore:
    """Saved voices in one folder, one `<name>.npz` each.

    Args:
        directory: the folder; default `voices_dir()`. It is created by the first `add`.
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = voices_dir(directory)

    def path(self, name: str) -> Path:
        """The file of voice `name`, which need not exist; VoiceError if `name` is not a valid name."""
        return self.directory / (_check_name(name) + ".npz")

    def exists(self, name: str) -> bool:
        """Whether voice `name` has a file, readable or not."""
        return self.path(name).is_file()

    def add(self, name: str, codes: Any, text: str, codec: str, sample_rate: int,
            source: str | os.PathLike | None = None, force: bool = False,
            hop_length: int = DAC_HOP_LENGTH, audio: np.ndarray | None = None) -> Voice:
        """Save a voice atomically: a crash leaves the old file or the new one, never part of one.

        Args:
            name: 1-64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit.
            codes: integer [frames, codebooks] codes in 0..1023, from `codec.encode(wave, rate)`.
            text: the exact transcript of the audio, starting with [S1] or [S2].
            codec: `codec_id` of the codec that made `codes`.
            sample_rate: the codec's sample rate in Hz.
            source: the audio file it came from; only its base name is kept.
            force: replace a voice of the same name.
            hop_length: samples per code frame, to record the length in seconds.
            audio: the voice as float mono at AUDIO_RATE (kept as 16-bit), so a model on another
                codec (Dia2's Mimi) can use the voice too.

        Returns:
            The saved Voice.

        Raises:
            VoiceError: a bad name, codes, codec or rate, or the voice exists and `force` is false.
            ScriptError: `text` is not a valid transcript.
        """
        from .text import validate_script

        path = self.path(name)
        if not force and path.exists():
            raise VoiceError(f"voice {name!r} exists; use --force to replace it")
        arr = _check_codes(codes)
        validate_script(text, what="voice transcript")
        if not isinstance(codec, str) or not codec:
            raise VoiceError(f"codec must be a non-empty codec id; got {codec!r}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise VoiceError(f"sample_rate must be a positive whole number of Hz; got {sample_rate!r}")
        metadata = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": None if source is None else os.path.basename(os.fspath(source)),
            "seconds": round(len(arr) * hop_length / int(sample_rate), 3),
            "frames": len(arr),
            "format_version": FORMAT_VERSION,
        }
        header = dict(metadata, text=text, codec=codec, sample_rate=int(sample_rate))
        meta = np.frombuffer(json.dumps(header, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # A leading '.' and a .tmp suffix keep a crash's leftover out of every listing; mkstemp's
            # owner-only mode is kept, since a voice is personal data.
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
        except OSError as exc:
            raise VoiceError(f"cannot write to the voices folder {self.directory}: {exc.strerror or exc}; "
                             "choose another with --voices-dir or FASTDIA_VOICES_DIR") from None
        try:
            with os.fdopen(fd, "wb") as f:
                extra = {} if audio is None else {"audio24k": _pcm16(audio)}
                np.savez(f, codes=arr, meta=meta, **extra)
                f.flush()
                os.fsync(f.fileno())
            if force or not _link(tmp, path, name):
                os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        Path(tmp).unlink(missing_ok=True)  # after a link, the voice's other name
        kept = None if audio is None else _pcm16(audio).astype(np.float32) / 32768
        return Voice(name, arr, text, codec, int(sample_rate), metadata, kept)

    def get(self, name: str) -> Voice:
        """Load voice `name`; VoiceError for an invalid name, an unknown voice (the message names
        those that exist) or an unreadable file."""
        path = self.path(name)
        if not path.is_file():
            names = [p.stem for p in self._files()]
            have = f"saved voices: {', '.join(names)}" if names else f"none are saved there; add one with: {ADD_HINT}"
            raise VoiceNotFoundError(f"no voice named {name!r} in {self.directory}; {have}")
        return _load(path)

    def list(self, broken: list[VoiceError] | None = None) -> list[Voice]:
        """Every readable voice. An unreadable file is skipped, so that one bad file never hides the
        others, and reported: appended to `broken` if given, else as a BrokenVoiceWarning.

        Args:
            broken: a list to collect a VoiceError per unreadable file.

        Returns:
            The voices, sorted by name.
        """
        voices = []
        for path in self._files():
            try:
                voices.append(_load(path))
            except VoiceError as exc:
                if broken is None:
                    warnings.warn(str(exc), BrokenVoiceWarning, stacklevel=2)
                else:
                    broken.append(exc)
        return voices

    def remove(self, name: str) -> Path:
        """Delete voice `name`, also when its file is unreadable (the fix for a broken one), and
        return the deleted path; VoiceError for an invalid name, VoiceNotFoundError for an unknown
        voice (also one that another process removed first)."""
        path = self.path(name)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError):
            self.get(name)  # raises the unknown-voice error, which names the voices that exist
            raise VoiceNotFoundError(f"no voice named {name!r} in {self.directory}") from None
        return path

    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("*.npz") if p.is_file() and _valid_name(p.stem))


def _link(tmp: str, path: Path, name: str) -> bool:
    """Give the finished file its name only if no voice has it, in one step (two clients adding the
    same new name: one wins, the other is told it exists). False where the filesystem has no hard links."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise VoiceError(f"voice {name!r} exists; use --force to replace it") from None
    except OSError:
        return False
    return True


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and ".." not in name


def _check_name(name: Any) -> str:
    if not _valid_name(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."  # a name can be anything a client sent
        raise VoiceError(f"invalid voice name {shown}: use 1-64 ASCII letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit, without '/' or '..' (e.g. alice or narrator_2)")
    return name


def _check_codes(codes: Any) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 2 or 0 in arr.shape:
        raise VoiceError(f"voice codes must be a non-empty 2-D array [frames, codebooks]; got shape {list(arr.shape)}")
    if arr.dtype.kind not in "iu":
        raise VoiceError(f"voice codes must be integers; got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= CODEBOOK_SIZE:
        raise VoiceError(f"voice codes must lie in 0..{CODEBOOK_SIZE - 1}; got values from {lo} to {hi}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _load(path: Path) -> Voice:
    try:
        # Our own handle: np.load leaks the one it opens when the archive is broken.
        with open(path, "rb") as f:
            # np.load would read anything else as a pickle and blame allow_pickle, which misleads.
            if f.read(4) != _ZIP_MAGIC:
                raise ValueError("not an .npz archive")
            f.seek(0)
            with np.load(f, allow_pickle=False) as data:
                codes, header = data["codes"], json.loads(data["meta"].tobytes().decode("utf-8"))
                audio = data["audio24k"].astype(np.float32) / 32768 if "audio24k" in data.files else None
        if not isinstance(header, dict):
            raise ValueError("its metadata is not a JSON object")
        version = header.get("format_version")
        newer = isinstance(version, int) and version > FORMAT_VERSION
        if not newer:  # a newer format may lay out its fields differently
            text, codec, rate = header.get("text"), header.get("codec"), header.get("sample_rate")
            if not (isinstance(text, str) and isinstance(codec, str) and isinstance(rate, int) and rate > 0):
                raise ValueError("its metadata lacks a valid text, codec or sample_rate")
            codes = _check_codes(codes)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # VoiceError is a ValueError
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise VoiceError(f"voice file {path} is corrupt or unreadable ({reason}); remove it "
                         f"(fastdia voice remove {path.stem}) and add the voice again") from None
    if newer:
        raise VoiceError(f"voice file {path} has format version {version} but this fastdia reads up to "
                         f"{FORMAT_VERSION}; upgrade fastdia")
    metadata = {k: v for k, v in header.items() if k not in ("text", "codec", "sample_rate")}
    return Voice(path.stem, codes, text, codec, rate, metadata, audio)


def _pcm16(audio: np.ndarray) -> np.ndarray:
    wave = np.asarray(audio, dtype=np.float32)
    if wave.ndim != 1 or not np.isfinite(wave).all():
        raise VoiceError("a voice's kept audio must be a finite mono waveform")
    return np.clip(np.round(wave * 32768), -32768, 32767).astype(np.int16)
