"""Word timings for Dia2 voice prefixes from speech recognition (the optional `asr` extra).

Dia2 continues a voice best when it knows when each word of the prefix is said. With
`pip install "fastdia[asr]"` (faster-whisper) the timings come from Whisper's word timestamps;
without it the facade spreads a given transcript evenly instead (see `_words_for` in fastdia/dia2/api.py).

Which Whisper: the `FASTDIA_ASR_MODEL` environment variable, else "large-v3". It takes a
faster-whisper size name ("large-v3", "small.en", ...), a hub id of a CTranslate2 Whisper conversion
(downloaded once into the Hugging Face cache), or a local CTranslate2 Whisper folder (works offline).
It runs on the CPU in int8: a prefix is a few seconds of audio, and the GPU stays free for Dia2.

The model is loaded once per (model, device, compute type) and kept for the life of the process:
loading large-v3 takes seconds and about 1.5 GB, so it must never happen per call (a failed load is
remembered too, so an offline machine does not wait on the hub every generation). Transcripts are
also kept (a few, by audio content), because the same voice prompt is usually reused call after call.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict

import numpy as np

from ..errors import AudioError, ModelNotFoundError

DEFAULT_MODEL = "large-v3"
MODEL_ENV = "FASTDIA_ASR_MODEL"
_RATE = 16000  # Whisper's input rate
_DEVICE, _COMPUTE_TYPE = "cpu", "int8"

_models: dict[tuple[str, str, str], object] = {}  # a WhisperModel, or the error its load raised
_models_lock = threading.Lock()  # two first calls at once must not load two copies
_transcripts: OrderedDict[tuple, list] = OrderedDict()
_transcripts_lock = threading.Lock()  # held only around the dict, never while transcribing
_TRANSCRIPTS_KEPT = 32


def available() -> bool:
    """Whether faster-whisper (the `asr` extra) is installed; imports nothing heavy."""
    import importlib.util

    return importlib.util.find_spec("faster_whisper") is not None


def model_name(model: str | None = None) -> str:
    """The Whisper to use: `model`, else $FASTDIA_ASR_MODEL, else large-v3."""
    return model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def load_model(model: str | None = None):
    """The faster_whisper.WhisperModel for `model` (see `model_name`), loaded on first use and cached.

    Raises:
        ModelNotFoundError: faster-whisper is not installed, or the model cannot be found or loaded.
    """
    name = model_name(model)
    key = (name, _DEVICE, _COMPUTE_TYPE)
    with _models_lock:
        if key not in _models:
            try:
                _models[key] = _load(name)
            except ModelNotFoundError as exc:
                # A failed load is kept too: with no network each retry would wait on the hub again,
                # once per generation. Another model name (e.g. $FASTDIA_ASR_MODEL fixed) tries afresh.
                _models[key] = exc
        found = _models[key]
    if isinstance(found, Exception):
        raise ModelNotFoundError(str(found))  # a fresh one: re-raising the kept one would grow its traceback
    return found


@contextlib.contextmanager
def _keep_threads():
    """CTranslate2 sets the process's OpenMP thread count, which the BLAS then follows; put
    torch's back afterwards, so speech generation keeps its threads (and its exact numbers:
    a BLAS's rounding can depend on its thread count)."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _load(name: str):
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        raise ModelNotFoundError('speech recognition needs faster-whisper: pip install "fastdia[asr]"') from None
    try:
        with _keep_threads():
            return WhisperModel(os.path.expanduser(name), device=_DEVICE, compute_type=_COMPUTE_TYPE)
    except Exception as exc:  # hub, network and CTranslate2 errors share no base class
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ModelNotFoundError(
            f"cannot load the Whisper model {name!r} for prefix word timings ({type(exc).__name__}: {first_line}); "
            f"with no network, set {MODEL_ENV} to a local CTranslate2 Whisper folder (or a model already "
            "in the Hugging Face cache)") from exc


def transcribe_words(wave: np.ndarray, sample_rate: int, model: str | None = None) -> list[tuple[str, float, float]]:
    """The words said in `wave`, with their times: `[(word, start_s, end_s), ...]`.

    Args:
        wave: float samples, [N] or [N, channels] (channels are averaged).
        sample_rate: Hz of `wave`; it is resampled to Whisper's 16 kHz.
        model: a Whisper (see `model_name`); default $FASTDIA_ASR_MODEL or large-v3.

    Returns:
        The recognised words, stripped of surrounding spaces, times clipped to the audio; empty when
        nothing is recognised.

    Raises:
        AudioError: the waveform is empty or not numeric.
        ModelNotFoundError: faster-whisper is missing or the model cannot be loaded.
    """
    audio = _to_16k(wave, sample_rate)
    name = model_name(model)
    key = (name, hashlib.sha1(audio.tobytes()).hexdigest())
    with _transcripts_lock:
        if key in _transcripts:
            _transcripts.move_to_end(key)
            return list(_transcripts[key])
    duration = audio.shape[0] / _RATE
    with _keep_threads():
        whisper = load_model(name)
        # Dia2 speaks English, so a prefix is English: naming the language skips detection, which
        # misfires on short clips. No VAD: the clip is the prefix as given, silences included.
        segments, _ = whisper.transcribe(audio, language="en", word_timestamps=True,
                                         condition_on_previous_text=False)
        words = []
        for segment in segments:  # a generator: the recognition runs here
            for w in segment.words or ():
                text = w.word.strip()
                if not text:
                    continue
                start = min(max(float(w.start), 0.0), duration)
                words.append((text, start, min(max(float(w.end), start), duration)))
    with _transcripts_lock:
        _transcripts[key] = words
        while len(_transcripts) > _TRANSCRIPTS_KEPT:
            _transcripts.popitem(last=False)
    return list(words)


def _to_16k(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    import soxr

    try:
        audio = np.asarray(wave, dtype=np.float32)
    except (TypeError, ValueError):
        raise AudioError("speech recognition needs a numeric waveform") from None
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.ndim != 1 or audio.size == 0:
        raise AudioError(f"speech recognition needs a non-empty mono or [N, channels] waveform, "
                         f"got shape {audio.shape}")
    if not sample_rate or sample_rate <= 0:
        raise AudioError(f"speech recognition needs the waveform's sample rate, got {sample_rate!r}")
    if sample_rate != _RATE:
        audio = soxr.resample(audio, sample_rate, _RATE)
    return np.ascontiguousarray(audio, dtype=np.float32)
