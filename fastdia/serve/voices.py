"""Saved voices over HTTP: the same store and the same encoding as `fastdia voice add`.

A voice is kept as DAC codes (what Dia-1 reads) plus its 24 kHz audio (from which Dia2 encodes it
with Mimi), so one saved voice serves both families. The DAC codec is loaded on the first upload
and kept.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from pathlib import Path

from ..backends.cpu.threads import release_pool
from ..errors import AudioError, VoiceError
from ..voices import Voice, VoiceStore

_SUFFIX = re.compile(r"\.[a-z0-9]{1,8}")

# OpenAI's built-in voice names; the engine maps each to a voice of its own.
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
                 "marin", "cedar")


def builtin_voices() -> tuple[str, ...]:
    """The engine's built-in names when it is importable, else OpenAI's (the same list)."""
    try:
        from .engine import BUILTIN_VOICES
    except Exception:  # the engine (torch) may not be importable yet; the names are OpenAI's anyway
        return OPENAI_VOICES
    return tuple(BUILTIN_VOICES)


def voice_object(voice: Voice) -> dict:
    """A saved voice as `/v1/audio/voices` lists it."""
    meta = voice.metadata
    return {"id": voice.name, "name": voice.name, "object": "voice", "builtin": False,
            "seconds": voice.seconds, "transcript": voice.text, "codec": voice.codec,
            "created": meta.get("created"), "source": meta.get("source")}


def builtin_object(name: str) -> dict:
    return {"id": name, "name": name, "object": "voice", "builtin": True}


class VoiceEncoder:
    """Encodes uploaded audio like `fastdia voice add`, with one DAC codec kept across uploads.

    Args:
        models: the served models; the codec is the one their Dia-1 model uses (a preset's own
            tiny codec for presets, else descript/dac_44khz), as `fastdia voice add --model` picks it.
        device: where the codec runs ("auto", "cpu", "cuda", ...).
    """

    def __init__(self, models: list[str], device: str | None) -> None:
        from ..codecs.dac.model import DEFAULT_MODEL
        from ..dia1.config import PRESETS
        from ..dia2.config import DIA2_PRESETS

        presets = set(PRESETS) | set(DIA2_PRESETS)
        self.source = "tiny-random" if models and models[0] in presets else DEFAULT_MODEL
        self.device = device or "auto"
        self._codec = None
        self._lock = threading.Lock()  # one load, and one encode at a time (the codec keeps no per-call state)

    def add(self, store: VoiceStore, name: str, data: bytes, filename: str | None, transcript: str,
            force: bool = False) -> Voice:
        """Decode `data` (an audio file's bytes), encode it and save it as `name`. Blocking.

        Raises:
            VoiceError: bad name, or the voice exists and not `force`.
            ScriptError: a bad transcript.
            AudioError: `data` is not audio.
        """
        from ..audio import read_audio, resample, to_mono
        from ..text import validate_script
        from ..voices import AUDIO_RATE

        # Name, transcript and audio are checked before the codec loads, as the CLI does.
        if store.exists(name) and not force:
            raise VoiceError(f"voice {name!r} exists; send force=true to replace it")
        validate_script(transcript, what="voice transcript")
        # The client's file name is only a hint of the format (libsndfile reads the content): an
        # extension that is not a short plain word would make an invalid or over-long temp name.
        suffix = Path(filename or "").suffix.lower()
        if not _SUFFIX.fullmatch(suffix):
            suffix = ".wav"
        fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="fastdia-voice-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            wave, rate = read_audio(tmp)
        except AudioError as exc:  # its message names the temp file, which is the server's business
            shown = repr(Path(filename).name[:80]) if filename else "the upload"
            raise AudioError(str(exc).replace(repr(tmp), shown).replace(tmp, shown)) from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        with self._lock:
            codec = self._load()
            try:
                codes = codec.encode(wave, rate)
            finally:
                # this worker thread's OpenMP pool would slow the engines' every kernel call
                release_pool()
        return store.add(name, codes, transcript, codec.codec_id, codec.sample_rate, source=filename,
                         force=force, hop_length=codec.hop_length, audio=resample(to_mono(wave), rate, AUDIO_RATE))

    def _load(self):
        if self._codec is None:
            from ..backends.device import resolve_device
            from ..codecs import DAC

            device = resolve_device(self.device)
            # Dia loads its codec with this dtype rule, and codec ids differ between dtypes.
            self._codec = DAC.from_pretrained(self.source, device=device,
                                              dtype="auto" if device.type == "cuda" else "float32")
        return self._codec
