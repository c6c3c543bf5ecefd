"""The `Dia2` facade: the same shape as `Dia` (generate, generate_codes, synthesize, decode, encode,
save_audio) for Nari Labs' Dia2 models on the Mimi codec. Thin: it validates input, turns voice
prompts into a prefix and calls fastdia.dia2.generation."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from ..backends.cpu.threads import release_pool
from ..backends.device import resolve_device, resolve_dtype
from .checkpoint import LoadedDia2, codec_source, load_dia2, load_tokenizer
from .config import DEFAULT_CODEC, DIA2_PRESETS, PRESET_CODECS, is_dia2  # noqa: F401  (is_dia2: part of this module's API)
from ..audio import check_chunk_seconds
from ..errors import AudioError, FastDiaError, GenerationError, ScriptError
from .generation import Dia2Generator, Prefix
from .options import Dia2GenerationConfig
from ..speech import Speech, SpeechChunk, VoicePrompt
from .text import Dia2Tokenizer, build_prefix_plan, parse_script

DEFAULT_MODEL = "nari-labs/Dia2-2B"


class Dia2:
    """A loaded Dia2 model, its tokenizer and its Mimi codec.

    Create it with `Dia2.from_pretrained(...)`; `generate(script)` returns a waveform at
    `sample_rate` (24000), `synthesize(script)` a `Speech` with word timestamps.
    """

    sample_rate = 24000

    def __init__(self, loaded: LoadedDia2, device: torch.device, dtype: torch.dtype, tokenizer: Dia2Tokenizer,
                 codec: str | Path, voices_dir: str | os.PathLike | None = None) -> None:
        self._loaded = loaded
        self.model, self.config = loaded.model, loaded.config
        self.device, self.dtype = device, dtype
        self.tokenizer = tokenizer
        data = self.config.data
        self.ids = tokenizer.text_ids(data.text_pad_token_id, data.text_new_word_token_id, data.text_zero_token_id)
        self._generator = Dia2Generator(self.model, device, self.ids)
        self.codec_source, self._codec = codec, None
        self.is_random = loaded.directory is None
        # Saved voices (fastdia voice add) used as prefixes: looked up here, encoded for Mimi on
        # first use and kept for the life of this object.
        self.voices_dir = voices_dir
        self._voice_codes: dict[tuple[str, str], np.ndarray] = {}

    @classmethod
    def from_pretrained(cls, model: str | Path = DEFAULT_MODEL, device: str | torch.device = "auto",
                        dtype: str | torch.dtype = "auto", quantize: str | None = None,
                        codec: str | Path | None = None, voices_dir: str | os.PathLike | None = None) -> "Dia2":
        """Load a Dia2 model.

        Args:
            model: a hub id ("nari-labs/Dia2-1B", "nari-labs/Dia2-2B"), a local directory
                (config.json + model.safetensors + tokenizer files), or a preset
                ("dia2-tiny-random", "dia2-2b-random": random weights, offline).
            device: "auto" (CUDA when available), "cpu", "cuda", ...
            dtype: "auto" (bfloat16 on CUDA; on CPU bfloat16 only for a model over 100 M
                parameters, unquantized, on a CPU with native bfloat16; else float32),
                "float32", "bfloat16".
                A `fastdia export onnx` folder runs on onnxruntime (CPU).
            quantize: None, "int8" or "int4" weight-only quantization on CPU (see
                fastdia.dia2.quantized); a folder written by `fastdia convert --quantize` is
                quantized already.
            codec: the Mimi codec (hub id, directory, "mimi-tiny-random"); default: the
                checkpoint's `assets.mimi`, else "kyutai/mimi"; presets use their own.
            voices_dir: the saved voices' folder for prefixes given by name (default:
                $FASTDIA_VOICES_DIR, else the XDG data dir).
        """
        from ..hub import local_source
        from .checkpoint import _choose_files, source_parameters, source_quantization
        from ..backends.onnx.manifest import is_onnx_dir
        from ..quant.modules import check_mode

        if is_onnx_dir(model):  # a `fastdia export onnx` folder: onnxruntime, CPU, float32 inputs
            from .onnx import load_dia2_onnx

            if quantize is not None:
                raise GenerationError(f"{model} is an ONNX export; quantize it with `fastdia export onnx "
                                      f"--quantize {quantize}` instead")
            loaded, tokenizer, ort_codec, is_random = load_dia2_onnx(model)
            tts = cls(loaded, torch.device("cpu"), torch.float32, tokenizer, codec or "onnx", voices_dir)
            if codec is None:
                tts._codec = ort_codec
                if ort_codec is None:  # exported with --codec none: the torch Mimi
                    tts.codec_source = DEFAULT_CODEC
            tts.is_random = is_random
            return tts
        dev = resolve_device(device)
        mode = check_mode(quantize)
        model = local_source(model, DIA2_PRESETS, _choose_files, "Dia2 model")  # dtype "auto" reads its size
        # "auto" means what it means for Dia-1 (fastdia.backends.device.resolve_dtype): bfloat16
        # on CUDA; on CPU bfloat16 only for a large unquantized model on a CPU with native
        # bfloat16, else float32. A converted quantized folder counts as quantized.
        dt = resolve_dtype(dtype, dev, source_parameters(model), mode or source_quantization(model))
        loaded = load_dia2(model, dev, dt, quantize=mode)
        release_pool()  # loading's OpenMP workers: kept, they would slow generation on any other thread
        return cls(loaded, dev, dt, load_tokenizer(loaded), codec_source(loaded, codec), voices_dir)

    # ------------------------------------------------------------------ codec
    @property
    def codec(self):
        """The Mimi codec, loaded on first use."""
        if self._codec is None:
            from ..codecs.mimi.codec import Mimi

            self._codec = Mimi.from_pretrained(self.codec_source, device=self.device, dtype="float32")
            if self._codec.n_codebooks < self.config.data.n_codebooks:
                raise FastDiaError(f"codec {self.codec_source} has {self._codec.n_codebooks} codebooks but the "
                                   f"model needs {self.config.data.n_codebooks}")
        return self._codec

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes `[T, C]` -> np.float32 waveform `[T * 1920]` at 24 kHz, clamped to [-1, 1]."""
        return np.clip(self.codec.decode(codes), -1.0, 1.0)

    def encode(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """Waveform -> codes np.int64 `[T, C]` (the model's C codebooks)."""
        return self.codec.encode(wave, sample_rate)[:, : self.config.data.n_codebooks]

    def save_audio(self, path: str | os.PathLike, audio: np.ndarray) -> Path:
        """Write `audio` (at 24 kHz); the format comes from the extension (wav, flac, ogg, mp3)."""
        from ..audio import write_audio

        return write_audio(path, audio, self.sample_rate)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def __repr__(self) -> str:
        return (f"Dia2(model={self._loaded.source!r}, device={str(self.device)!r}, "
                f"dtype={str(self.dtype).removeprefix('torch.')!r}, codec={str(self.codec_source)!r})")

    # ------------------------------------------------------------------ generation
    def generation_config(self, **sampling: Any) -> Dia2GenerationConfig:
        """The defaults with `sampling` keywords applied (validated)."""
        gen = Dia2GenerationConfig().with_overrides(**sampling)
        need = max(self.config.data.delay_pattern) + 2  # the first frame complete in every codebook
        if gen.max_steps is not None and gen.max_steps < need:
            raise GenerationError(f"max_steps={gen.max_steps} is too small: the codebooks' delays need at least "
                                  f"{need} steps for one frame of audio (12.5 steps are 1 s)")
        return gen

    def synthesize(self, script: str, *, prefix_speaker_1: VoicePrompt | str | None = None,
                   prefix_speaker_2: VoicePrompt | str | None = None, include_prefix: bool = False,
                   **sampling: Any) -> Speech:
        """Speak a script; returns `Speech(audio, sample_rate, codes, timestamps)`.

        Args:
            script: e.g. "[S1] Hello there. [S2] Hi! (laughs)".
            prefix_speaker_1, prefix_speaker_2: voices to continue: a `VoicePrompt`, an audio
                path, or a saved voice (its name or a `fastdia.voices.Voice`); speaker 2 needs
                speaker 1.
            include_prefix: keep the prefix audio at the start of the result.
            **sampling: cfg_scale (2.0), temperature (0.8), text_temperature (0.6), top_k (50),
                cfg_filter_k (50), seed, max_steps.
        """
        result = self._run(script, prefix_speaker_1, prefix_speaker_2, include_prefix, sampling)
        codes = result.codes.cpu().numpy().astype(np.int64)
        if self.is_random:
            warnings.warn("this is a random-weight preset: its audio is noise, useful only for trials", UserWarning,
                          stacklevel=2)
        audio = self.decode(codes) if len(codes) else np.zeros(0, np.float32)
        return Speech(audio=audio, sample_rate=self.sample_rate, codes=codes, timestamps=tuple(result.timestamps))

    def generate(self, script: str, **options: Any) -> np.ndarray:
        """Speak a script; np.float32 mono at 24 kHz. Takes `synthesize`'s arguments."""
        return self.synthesize(script, **options).audio

    def generate_codes(self, script: str, *, prefix_speaker_1=None, prefix_speaker_2=None,
                       include_prefix: bool = False, **sampling: Any) -> np.ndarray:
        """Codes np.int64 `[T, C]` (time-major, what Mimi decodes). Takes `synthesize`'s arguments."""
        result = self._run(script, prefix_speaker_1, prefix_speaker_2, include_prefix, sampling)
        return result.codes.cpu().numpy().astype(np.int64)

    def stream(self, script, *, prefix_speaker_1: VoicePrompt | str | None = None,
               prefix_speaker_2: VoicePrompt | str | None = None, include_prefix: bool = False,
               chunk_seconds: float = 0.24, **sampling: Any) -> Iterator[SpeechChunk]:
        """Speak as a stream: `SpeechChunk(audio, words)` pieces as soon as their frames are final.

        Args:
            script: the whole script, or an iterable of text pieces (e.g. tokens from an LLM):
                generation reads on as far as each step needs and waits for more; the end of the
                iterable ends the speech. An async iterable gives an async generator (use
                `async for`); generation then runs in a worker thread.
            chunk_seconds: audio per chunk, in whole 80 ms frames (default 0.24 s = 3 frames).
            Others: as `synthesize`.

        Yields:
            SpeechChunk; joined, the audio equals `generate(...)` with the same seed (to float
            rounding) and the words are `synthesize(...).timestamps`.
        """
        gen = self.generation_config(**sampling)
        check_chunk_seconds(chunk_seconds)
        prefix_args = (prefix_speaker_1, prefix_speaker_2, include_prefix)
        if hasattr(script, "__aiter__"):
            prefix = self._prefix(*prefix_args)
            return self._astream(gen, prefix, script, max(1, round(chunk_seconds * 12.5)))
        if isinstance(script, str):
            entries, pieces = self._entries(script), None
        elif isinstance(script, Iterable):
            entries, pieces = None, (_check_piece(p) for p in script)
        else:
            raise ScriptError(f"the script must be a string or an iterable of strings, got {type(script).__name__}")
        prefix = self._prefix(*prefix_args)
        frames = max(1, round(chunk_seconds * 12.5))
        return self._stream(gen, prefix, entries, pieces, frames)

    async def _astream(self, gen, prefix, text, frames: int):
        """`stream` for an async iterable of text: an async generator of SpeechChunk.

        Generation is blocking work, so it runs in one worker thread (torch's inference mode is
        per thread); the thread pulls text pieces from the event loop as the state machine needs
        them and hands chunks back through a queue. Leaving the loop early stops the worker at its
        next chunk or text read.
        """
        import asyncio
        import threading

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop, done = threading.Event(), object()
        source = text.__aiter__()

        async def next_piece():
            try:
                return await source.__anext__()
            except StopAsyncIteration:
                return None

        def pieces():
            while not stop.is_set():
                piece = asyncio.run_coroutine_threadsafe(next_piece(), loop).result()
                if piece is None:
                    return
                yield _check_piece(piece)

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the consumer's loop has closed: nobody is listening any more
                stop.set()

        def work():
            try:
                for chunk in self._stream(gen, prefix, None, pieces(), frames):
                    if stop.is_set():
                        break
                    put(chunk)
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)
            finally:
                put(done)

        worker = threading.Thread(target=work, name="fastdia-dia2-stream", daemon=True)
        worker.start()
        try:
            while (item := await queue.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def _stream(self, gen, prefix, entries, pieces, frames: int) -> Iterator[SpeechChunk]:
        decoder = self.codec.stream()
        audio, words, held = [], [], 0
        with torch.inference_mode():
            for codes, new_words in self._generator.stream(gen, prefix, entries=entries, text=pieces,
                                                           tokenizer=self.tokenizer):
                audio.append(np.clip(decoder.push(codes.cpu().numpy()), -1.0, 1.0))
                words += new_words
                held += codes.shape[0]
                if held >= frames:
                    yield SpeechChunk(np.concatenate(audio), tuple(words))
                    audio, words, held = [], [], 0
        tail = decoder.finish()
        if len(tail):
            audio.append(np.clip(tail, -1.0, 1.0))
        if audio or words:
            yield SpeechChunk(np.concatenate(audio) if audio else np.zeros(0, np.float32), tuple(words))

    def _entries(self, script):
        if not isinstance(script, str):
            raise ScriptError(f"the script must be a string, got {type(script).__name__}")
        entries = parse_script(script, self.tokenizer, self.ids)
        if not entries:
            raise ScriptError('the script is empty; write dialogue such as "[S1] Hello there. [S2] Hi!"')
        return entries

    def _run(self, script, p1, p2, include_prefix, sampling):
        gen = self.generation_config(**sampling)
        entries = self._entries(script)
        prefix = self._prefix(p1, p2, include_prefix)
        return self._generator.generate(entries, gen, prefix)

    def _prefix(self, p1, p2, include_prefix: bool) -> Prefix | None:
        if p1 is None and p2 is None:
            return None
        if p1 is None:
            raise GenerationError("prefix_speaker_2 needs prefix_speaker_1 (the reference's order); give speaker 1 first")
        speakers = [self._voice(p, i + 1) for i, p in enumerate((p1, p2)) if p is not None]
        plan = build_prefix_plan(self.tokenizer, *[(words, codes.shape[0]) for words, codes in speakers])
        codes = torch.as_tensor(np.concatenate([c for _, c in speakers]).T.copy())  # (C, P0)
        return Prefix(plan, codes, include_audio=bool(include_prefix))

    def _voice(self, prompt, speaker: int) -> tuple[list, np.ndarray]:
        """A voice prompt -> (word timings, Mimi codes [F, C])."""
        from ..audio import read_audio
        from ..voices import Voice, VoiceStore

        if isinstance(prompt, str) and not Path(prompt).expanduser().exists():
            prompt = VoiceStore(self.voices_dir).get(prompt)  # not a file: a saved voice's name
        if isinstance(prompt, Voice):
            return self._saved_voice(prompt, speaker)
        if isinstance(prompt, (str, os.PathLike)):
            prompt = VoicePrompt(audio=prompt)
        if not isinstance(prompt, VoicePrompt):
            raise GenerationError(f"prefix_speaker_{speaker} must be a VoicePrompt or an audio path, "
                                  f"got {type(prompt).__name__}")
        if isinstance(prompt.audio, (str, os.PathLike)):
            wave, sr = read_audio(prompt.audio)
        else:
            wave, sr = np.asarray(prompt.audio, dtype=np.float32), prompt.sample_rate
            if sr is None:
                raise AudioError(f"prefix_speaker_{speaker}: a waveform needs its sample_rate")
        codes = self.encode(wave, sr)
        return _words_for(prompt, codes.shape[0] / 12.5, speaker, wave, sr), codes

    def _saved_voice(self, voice, speaker: int) -> tuple[list, np.ndarray]:
        """A saved voice: its kept audio encoded with this model's Mimi (once), its transcript."""
        from ..errors import VoiceError
        from ..voices import AUDIO_RATE

        if voice.audio is None:
            raise VoiceError(f"voice {voice.name!r} was saved without its audio (by an older fastdia), which Dia2 "
                             "needs; add it again with fastdia voice add --force")
        key = (voice.name, self.codec.codec_id)
        if key not in self._voice_codes:
            self._voice_codes[key] = self.encode(voice.audio, AUDIO_RATE)
        codes = self._voice_codes[key]
        prompt = VoicePrompt(voice.audio, AUDIO_RATE, text=voice.text, words=voice.metadata.get("words"))
        return _words_for(prompt, codes.shape[0] / 12.5, speaker, voice.audio, AUDIO_RATE), codes


def _words_for(prompt: VoicePrompt, seconds: float, speaker: int, wave: np.ndarray | None = None,
               sample_rate: int | None = None) -> list:
    """A prompt's word timings, best source first: given `words`; else speech recognition of `wave`
    (the `asr` extra, when installed); else its `text`'s words spread evenly over `seconds` (warned)."""
    from . import asr

    if prompt.words:
        return [tuple(w) for w in prompt.words]
    plain = [w for w in (prompt.text or "").replace("[S1]", " ").replace("[S2]", " ").split() if w]
    why = 'the ASR extra, pip install "fastdia[asr]", would time them from the audio'
    if wave is not None and asr.available():
        try:
            heard = asr.transcribe_words(wave, sample_rate)
            why = "speech recognition heard no words in the audio"
        except FastDiaError as exc:
            if not plain:
                raise GenerationError(f"prefix_speaker_{speaker} has no transcript (text= or words=) and speech "
                                      f"recognition failed: {exc}") from exc
            heard, why = [], f"speech recognition failed: {exc}"
        if heard:
            # Recognised timings beat any spread; a given text with as many words keeps its spelling.
            if len(plain) == len(heard):
                return [(w, start, end) for w, (_, start, end) in zip(plain, heard)]
            return heard
    if not prompt.text:
        hint = f"; {why}" if why.startswith("speech") else ' or pip install "fastdia[asr]" to recognise it'
        raise GenerationError(f"prefix_speaker_{speaker} needs its transcript: text= (or words= with timings)"
                              f"{hint}")
    # No timings: spread the words evenly; the model then hears the words roughly where they are
    # said. Exact timings (words=, or the ASR extra) clone better.
    if not plain:
        raise GenerationError(f"prefix_speaker_{speaker}: its text has no words")
    step = seconds / len(plain)
    warnings.warn(f"prefix_speaker_{speaker} has text but no word timings, so its words are spread evenly over "
                  f"the audio ({why}); give words=[(word, start, end), ...] to clone better", UserWarning,
                  stacklevel=6)
    return [(w, i * step, (i + 1) * step) for i, w in enumerate(plain)]


def _check_piece(piece) -> str:
    if not isinstance(piece, str):
        raise ScriptError(f"streamed script pieces must be strings, got {type(piece).__name__}")
    return piece


