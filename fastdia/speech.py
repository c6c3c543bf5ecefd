"""What a synthesis returns, the same for both model families."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays have no truth value to compare by
class Speech:
    """One spoken script.

    Attributes:
        audio: np.float32 mono waveform at `sample_rate`.
        sample_rate: Hz (44100 for Dia-1, 24000 for Dia2).
        codes: np.int64 `[T, C]`, the codec codes the audio was decoded from (time-major).
        timestamps: `[(word, seconds)]`, when each word starts; empty for Dia-1, which has no
            word alignment.
    """

    audio: np.ndarray
    sample_rate: int
    codes: np.ndarray
    timestamps: tuple[tuple[str, float], ...] = field(default=())

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return len(self.audio) / self.sample_rate


@dataclass(frozen=True, eq=False)
class VoicePrompt:
    """A voice to continue from (Dia2's speaker prefixes).

    Attributes:
        audio: a path to an audio file, or a float waveform (give `sample_rate`).
        sample_rate: Hz of a waveform `audio`.
        text: what is said in the audio (used when `words` is not given: the words are then
            spread evenly over the audio, with a warning; exact timings clone better).
        words: `[(word, start_seconds, end_seconds), ...]`, the transcript with timings.
    """

    audio: object
    sample_rate: int | None = None
    text: str | None = None
    words: tuple | list | None = None


@dataclass(frozen=True, eq=False)
class SpeechChunk:
    """A piece of a stream: audio that is final, and the words that start in it.

    Attributes:
        audio: np.float32 mono samples.
        words: `((word, seconds), ...)`, times from the start of the whole stream.
    """

    audio: np.ndarray
    words: tuple[tuple[str, float], ...] = ()
