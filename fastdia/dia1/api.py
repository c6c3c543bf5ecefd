"""The `Dia` facade: the one object users hold. Thin: it validates input and calls generation."""

from __future__ import annotations

import os
import secrets
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..backends.cpu.threads import release_pool
from ..backends.device import resolve_device, resolve_dtype
from .checkpoint import _choose_files as choose_files
from .checkpoint import load_model, source_parameters, source_quantization
from ..hub import local_source
from .config import PRESETS, DiaConfig
from ..audio import check_chunk_seconds
from ..errors import AudioError, GenerationError, ScriptError
from ..speech import Speech
from .generation import FRAME_RATE, Dia1Generator
from .longform import Segment, compose, run_script, select_context
from .options import GenerationConfig
from ..text import DEFAULT_CHUNK_TOKENS, MAX_SCRIPT_BYTES, retag, split_script, validate_script

DEFAULT_MODEL = "nari-labs/Dia-1.6B-0626"
DEFAULT_CODEC = "descript/dac_44khz"

# A prompt longer than this usually makes cloning worse, not better (5-10 s works best).
PROMPT_WARN_SECONDS = 15.0

PromptCodes = np.ndarray | torch.Tensor
# An audio prompt: a file path, a float waveform (with sample_rate), or int codes [P, 9].
AudioPrompt = str | os.PathLike | np.ndarray | torch.Tensor
# A saved voice: its name or a fastdia.voices.Voice; or one per speaker {"S1": ..., "S2": ...}.
VoiceArg = Any | Mapping[str, Any] | None


class NoiseModelWarning(UserWarning):
    """The model is a random preset: its audio is noise, useful only for trials."""


class Dia:
    """A loaded Dia-1 model and its codec.

    Create it with `Dia.from_pretrained(...)`; then `generate(text)` returns a waveform at
    `sample_rate`, `generate_codes(text)` the audio codes.
    """

    def __init__(self, loaded, device: torch.device, dtype: torch.dtype, codec: str | Path | None = None,
                 voices_dir: str | os.PathLike | None = None) -> None:
        self._loaded = loaded
        self.model = loaded.model
        self.config: DiaConfig = loaded.config
        self.device, self.dtype = device, dtype
        self.layout: str = loaded.layout
        self._generator = Dia1Generator(self.model, device, dtype)
        is_preset = loaded.layout == "preset"
        # Presets carry their own tiny random codec so everything runs offline.
        self.codec_source = codec if codec is not None else ("tiny-random" if is_preset else DEFAULT_CODEC)
        self._codec = None
        self.is_random = is_preset
        # Where `voice="name"` is looked up (None: $FASTDIA_VOICES_DIR, else the XDG data dir).
        self.voices_dir = voices_dir

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = DEFAULT_MODEL,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        quantize: str | None = None,
        codec: str | Path | None = None,
        voices_dir: str | os.PathLike | None = None,
        backend: str = "auto",
    ) -> "Dia":
        """Load a Dia-1 model.

        Args:
            model: a hub id (e.g. "nari-labs/Dia-1.6B-0626", downloaded once and cached), a local
                directory with config.json and model.safetensors / dia-v0_1.pth, or a preset
                ("tiny-random", "dia-1.6b-random": random weights, for tests and benchmarks).
            device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
            dtype: "auto" (bfloat16 on CUDA; on CPU bfloat16 only where it is measurably faster:
                a model over 100 M parameters, unquantized, on a CPU with native bfloat16; else
                float32), "float32", "bfloat16", "float16".
            quantize: None, "int8" (per-channel) or "int4" (group-wise) weight-only quantization
                (see fastdia.quant.modules).
            codec: the DAC codec: hub id (default "descript/dac_44khz"), local directory or
                file, or "tiny-random" (the default for presets). Loaded on first use.
            voices_dir: the saved voices' folder for `voice="name"` (default: $FASTDIA_VOICES_DIR,
                else $XDG_DATA_HOME/fastdia/voices).
            backend: "auto" (onnxruntime for a `fastdia export onnx` folder, else PyTorch), "torch",
                or "onnxruntime" (a model that is not an export is exported once into
                ~/.cache/fastdia/onnx, float32 or `quantize`). onnxruntime runs on the CPU in float32.
        """
        from ..backends.onnx.manifest import is_onnx_dir
        from ..quant.modules import check_mode

        if backend not in ("auto", "torch", "onnxruntime"):
            raise GenerationError(f"backend must be auto, torch or onnxruntime, got {backend!r}")
        if backend == "onnxruntime" or (backend == "auto" and is_onnx_dir(model)):
            from .onnx import load_onnx

            loaded, ort_codec, is_random = load_onnx(model, quantize=quantize)
            tts = cls(loaded, torch.device("cpu"), torch.float32, codec=codec, voices_dir=voices_dir)
            if codec is None and ort_codec is not None:
                tts._codec, tts.codec_source = ort_codec, "onnx"
            tts.is_random = is_random
            return tts

        dev = resolve_device(device)
        mode = check_mode(quantize)
        model = local_source(model, PRESETS, choose_files, "model")  # dtype "auto" reads its size
        # A checkpoint saved by `fastdia convert --quantize` is quantized whatever `quantize` says.
        dt = resolve_dtype(dtype, dev, source_parameters(model), mode or source_quantization(model))
        # Quantized models are built tensor by tensor, never holding a float copy of the whole.
        loaded = load_model(model, dev, dt, quantize=mode)
        release_pool()  # loading's OpenMP workers: kept, they would slow generation on any other thread
        return cls(loaded, dev, dt, codec=codec, voices_dir=voices_dir)

    # ------------------------------------------------------------------ info
    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz (44100 for DAC 44.1 kHz)."""
        return self._codec.sample_rate if self._codec is not None else 44100

    @property
    def codec(self):
        """The DAC codec, loaded on first use."""
        if self._codec is None:
            from ..codecs.dac.codec import DAC

            # The codec stays in float32 on CPU: it is small and its output is the audio itself.
            self._codec = DAC.from_pretrained(self.codec_source, device=self.device,
                                              dtype="auto" if self.device.type == "cuda" else "float32")
        return self._codec

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def __repr__(self) -> str:
        return (f"Dia(model={self._loaded.source!r}, layout={self.layout!r}, device={str(self.device)!r}, "
                f"dtype={str(self.dtype).removeprefix('torch.')!r}, codec={str(self.codec_source)!r})")

    # ------------------------------------------------------------------ audio
    def decode(self, codes: PromptCodes | Sequence[PromptCodes]) -> np.ndarray | list[np.ndarray]:
        """Codes `[T, 9]` -> np.float32 waveform `[T * 512]` (a list decodes as one batch)."""
        return self.codec.decode(codes)

    def encode(self, wave: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
        """Waveform `[N]` or `[N, channels]` at `sample_rate` -> codes np.int64 `[T, 9]`."""
        return self.codec.encode(wave, sample_rate)

    def save_audio(self, path: str | os.PathLike, audio: np.ndarray, loudness: float | None = None) -> Path:
        """Write `audio` (at `sample_rate`); the format comes from the extension (wav, flac, ogg, mp3).

        Args:
            loudness: optional target in LUFS (e.g. -16); the result never exceeds -1 dBTP.
        """
        from ..audio import check_output_path, normalize_loudness, write_audio

        path = check_output_path(path)
        if loudness is not None:
            audio = normalize_loudness(audio, self.sample_rate, target_lufs=loudness)
        return write_audio(path, audio, self.sample_rate)

    # ------------------------------------------------------------------ generation
    def generation_config(self, **sampling: Any) -> GenerationConfig:
        """The defaults with `sampling` keywords applied (validated)."""
        return GenerationConfig().with_overrides(**sampling)

    def generate(
        self,
        text: str | Sequence[str],
        *,
        audio_prompt: AudioPrompt | Sequence[AudioPrompt | None] | None = None,
        prompt_text: str | Sequence[str | None] | None = None,
        sample_rate: int | None = None,
        voice: VoiceArg = None,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        progress: bool = False,
        **sampling: Any,
    ) -> np.ndarray | list[np.ndarray]:
        """Speak a script of any length (or a list of scripts, as one batch).

        Args:
            text: a script such as "[S1] Hello. [S2] Hi! (laughs)", or a list of them. A script
                over `chunk_tokens` is spoken chunk after chunk, each conditioned on the voices
                and on the audio just generated (see fastdia.dia1.longform).
            audio_prompt: a voice to continue from: an audio file path, a float waveform
                (give `sample_rate`), or codes `[P, 9]`; one per text (or None) for a list.
            prompt_text: the transcript of the audio prompt, with speaker tags; it is placed
                before the script, as the model expects. Only the new audio is returned.
            sample_rate: the rate of a waveform `audio_prompt`.
            voice: a saved voice (its name, or a `fastdia.voices.Voice`) used like
                audio_prompt + prompt_text, or one per speaker: {"S1": "alice", "S2": "bob"}
                (a one-speaker voice is retagged for the speaker it is given to).
            chunk_tokens: the chunk budget for long scripts, in tokens (UTF-8 bytes; a speaker
                tag counts one). 160 is about 11 s of speech.
            progress: show a progress bar (frames, steps/s, realtime factor) on stderr.
            **sampling: max_tokens (per chunk), cfg_scale, temperature, top_p,
                cfg_filter_top_k, seed (any int; reduced modulo 2**63).

        Returns:
            np.float32 mono waveform at `self.sample_rate` (a list for a list of texts).
        """
        codes = self.generate_codes(text, audio_prompt=audio_prompt, prompt_text=prompt_text,
                                    sample_rate=sample_rate, voice=voice, chunk_tokens=chunk_tokens,
                                    progress=progress, **sampling)
        self._warn_if_random()
        return self.decode(codes)

    def generate_codes(
        self,
        text: str | Sequence[str],
        *,
        audio_prompt: AudioPrompt | Sequence[AudioPrompt | None] | None = None,
        prompt_text: str | Sequence[str | None] | None = None,
        sample_rate: int | None = None,
        voice: VoiceArg = None,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        progress: bool = False,
        **sampling: Any,
    ) -> np.ndarray | list[np.ndarray]:
        """Generate audio codes for a script, or for a list of scripts as one batch.

        Takes the same arguments as `generate`.

        Returns:
            np.int64 `[T, 9]` codes (a list of them for a list of texts): only new frames, the
            prompt and the end-of-speech marker excluded.
        """
        gen, jobs, single = self._plan(text, audio_prompt, prompt_text, sample_rate, voice, chunk_tokens, sampling)
        on_step, on_chunk, close = _progress_bar(progress, gen, jobs)
        try:
            with torch.inference_mode():
                if len(jobs) > 1 and all(len(chunks) == 1 for chunks, _ in jobs):
                    # Short scripts of a batch decode together (item i still gets seed + i).
                    tokens, prompts = zip(*(compose(voices, chunks[0]) for chunks, voices in jobs))
                    codes = self._generator.generate(list(tokens), list(prompts), gen, on_step=on_step)
                else:
                    codes = []
                    for i, (chunks, voices) in enumerate(jobs):
                        pieces = list(run_script(self._generator, chunks, voices, replace(gen, seed=gen.seed + i),
                                                 on_step=on_step, on_chunk=on_chunk))
                        codes.append(torch.cat(pieces) if pieces else torch.zeros((0, self.config.n_channels),
                                                                                  dtype=torch.long))
        finally:
            close()
        out = [c.cpu().numpy().astype(np.int64) for c in codes]
        return out[0] if single else out

    def synthesize(self, text: str, **options: Any) -> Speech:
        """Speak one script; returns a `Speech` (audio, sample_rate, codes, timestamps).

        Takes the arguments of `generate` for one script. `timestamps` is empty: Dia-1 has no
        word alignment (Dia2 fills it).
        """
        if not isinstance(text, str):
            raise ScriptError(f"synthesize speaks one script (a string), got {type(text).__name__}")
        codes = self.generate_codes(text, **options)
        self._warn_if_random()
        return Speech(audio=self.decode(codes), sample_rate=self.sample_rate, codes=codes)

    def stream(
        self,
        text: str,
        *,
        audio_prompt: AudioPrompt | None = None,
        prompt_text: str | None = None,
        sample_rate: int | None = None,
        voice: VoiceArg = None,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        chunk_seconds: float = 0.5,
        progress: bool = False,
        **sampling: Any,
    ) -> Iterator[np.ndarray]:
        """Speak a script as a stream of audio chunks, each yielded as soon as its frames are final.

        Takes the arguments of `generate` for one script (any length). Joined, the chunks equal
        `generate(text, seed=s, ...)` with the same seed and options (to float rounding). Input is
        checked when `stream` is called, before the first chunk is asked for.

        Args:
            chunk_seconds: audio per chunk (rounded to whole 512-sample frames; default 0.5 s).
                Smaller chunks come sooner; the first needs the 15-frame delay of the codebooks
                and the codec's context on top.

        Yields:
            np.float32 mono chunks at `self.sample_rate`.
        """
        if not isinstance(text, str):
            raise ScriptError(f"stream speaks one script (a string), got {type(text).__name__}; "
                              "use generate for a batch")
        check_chunk_seconds(chunk_seconds)
        gen, jobs, _ = self._plan(text, audio_prompt, prompt_text, sample_rate, voice, chunk_tokens, sampling)
        decoder = self.codec.stream(max(1, round(chunk_seconds * FRAME_RATE)))
        self._warn_if_random()
        return self._stream(gen, jobs[0], decoder, progress)

    def _stream(self, gen: GenerationConfig, job, decoder, progress: bool) -> Iterator[np.ndarray]:
        chunks, voices = job
        on_step, on_chunk, close = _progress_bar(progress, gen, [job])
        try:
            with torch.inference_mode():
                for codes in run_script(self._generator, chunks, voices, gen, on_step=on_step, on_chunk=on_chunk):
                    yield from decoder.push(codes.cpu().numpy())
            yield from decoder.finish()
        finally:
            close()

    def _warn_if_random(self) -> None:
        if self.is_random:
            warnings.warn("this is a random-weight preset: its audio is noise, useful only for trials",
                          NoiseModelWarning, stacklevel=3)

    # ------------------------------------------------------------------ planning
    def _plan(self, text, audio_prompt, prompt_text, sample_rate, voice, chunk_tokens, sampling):
        """Validate everything and turn it into (options with a concrete seed, [(chunks, voice
        segments)] per item, single); nothing slow has started when this raises."""
        gen = self.generation_config(**sampling)
        if gen.seed is None:
            gen = replace(gen, seed=secrets.randbits(62))
        single = isinstance(text, str)
        if not single and not isinstance(text, (list, tuple)):
            raise ScriptError(f"the script must be a string (or a list of strings), got {type(text).__name__}")
        texts = [text] if single else list(text)
        if not texts:
            raise GenerationError("no texts given")
        if voice is not None and (audio_prompt is not None or prompt_text is not None):
            raise GenerationError("give a voice or an audio_prompt (+ prompt_text), not both")
        transcripts = _per_item(prompt_text, len(texts), single, "prompt_text", is_item=lambda x: isinstance(x, str))
        scripts = []
        for i, (t, pt) in enumerate(zip(texts, transcripts)):
            name = "script" if single else f"script {i}"
            scripts.append(validate_script(t, what=name, max_tokens=MAX_SCRIPT_BYTES))
            if pt is not None:
                transcripts[i] = validate_script(pt, what="prompt_text" if single else f"prompt_text {i}")
        prompts = [None if p is None else self._prompt_codes(p, sample_rate, i)
                   for i, p in enumerate(_per_item(audio_prompt, len(texts), single, "audio_prompt", _is_prompt_item))]
        voice_segments = self._voice_segments(voice) if voice is not None else None
        jobs = []
        for i, (script, p, pt) in enumerate(zip(scripts, prompts, transcripts)):
            if pt is not None and p is None:
                raise GenerationError(f"prompt_text was given{'' if single else f' for item {i}'} without an audio_prompt")
            if voice_segments is not None:
                voices = voice_segments
            else:
                voices = [] if p is None else [Segment(pt or "", p)]
            frames = sum(v.frames for v in voices)
            self._generator.check_room(frames, gen.max_tokens, "" if single else f" of item {i}")
            if frames:
                self._warn_about_prompt(frames, gen)
            chunks = split_script(script, chunk_tokens)
            if len(chunks) == 1:
                chunks = [script]  # as written: a short script's tokens stay exactly what they were
            select_context(chunks[0], voices, [], gen.max_tokens, self.config.max_delay)  # text room
            jobs.append((chunks, voices))
        return gen, jobs, single

    def _voice_segments(self, voice) -> list[Segment]:
        """`voice=` (a name, a Voice, or {"S1": ..., "S2": ...}) -> prompt segments."""
        from ..voices import Voice, VoiceStore, check_codec

        store = None

        def load(v) -> Voice:
            nonlocal store
            if isinstance(v, Voice):
                found = v
            elif isinstance(v, str):
                store = store or VoiceStore(self.voices_dir)
                found = store.get(v)
            else:
                raise GenerationError(f"a voice is a saved voice's name or a Voice, got {type(v).__name__}")
            check_codec(found, self.codec.codec_id)
            self._check_codes(found.codes, 0)
            return found

        def segment(v: Voice, speaker: str | None) -> Segment:
            text = v.text if speaker is None else retag(v.text, speaker, f"voice {v.name!r}")
            return Segment(text, torch.as_tensor(v.codes, dtype=torch.long, device=self.device))

        if isinstance(voice, dict):
            segments = []
            for key in sorted(voice):
                tag = f"[{str(key).strip('[]').upper()}]"
                if tag not in ("[S1]", "[S2]"):
                    raise GenerationError(f"voice keys are the speakers S1 and S2, got {key!r}")
                if voice[key] is not None:
                    segments.append(segment(load(voice[key]), tag))
            return segments
        return [segment(load(voice), None)]

    # ------------------------------------------------------------------ prompts
    def _prompt_codes(self, prompt: AudioPrompt, sample_rate: int | None, i: int) -> torch.Tensor | None:
        """Any accepted prompt form -> codes `(P, 9)` long on our device (None if empty)."""
        if isinstance(prompt, (str, os.PathLike)):
            from ..audio import read_audio

            wave, sr = read_audio(prompt)
            return self._prompt_codes(wave, sr, i)
        arr = prompt.detach().cpu().numpy() if torch.is_tensor(prompt) else np.asarray(prompt)
        if arr.dtype.kind == "f":  # a waveform
            if sample_rate is None:
                raise AudioError("a waveform audio_prompt needs its sample_rate (e.g. sample_rate=44100)")
            if arr.size == 0:
                raise AudioError(f"audio prompt {i} is empty")
            return self._check_codes(self.encode(arr, sample_rate), i)
        return self._check_codes(arr, i)

    def _check_codes(self, codes: np.ndarray, i: int) -> torch.Tensor | None:
        c = self.config.n_channels
        t = torch.as_tensor(np.asarray(codes))
        if t.ndim != 2 or t.shape[1] != c:
            raise GenerationError(f"audio prompt {i}: expected codes of shape [P, {c}], got {list(t.shape)}")
        if t.is_floating_point() or t.dtype == torch.bool:
            raise GenerationError(f"audio prompt {i}: codes must be integers, got {t.dtype}")
        if t.shape[0] == 0:
            return None
        if int(t.min()) < 0 or int(t.max()) >= self.config.eos_id:
            raise GenerationError(f"audio prompt {i}: codes must be in 0..{self.config.eos_id - 1}")
        return t.to(self.device, torch.long)

    def _warn_about_prompt(self, frames: int, gen: GenerationConfig) -> None:
        seconds = frames / FRAME_RATE
        # Too little room is an error raised by the generator; here only the warnings.
        room = gen.max_tokens - (1 + frames + self.config.max_delay)
        if 0 < room < FRAME_RATE:
            warnings.warn(f"the audio prompt leaves only {room / FRAME_RATE:.2f} s for the script within "
                          f"max_tokens={gen.max_tokens}", UserWarning, stacklevel=5)
        if seconds > PROMPT_WARN_SECONDS:
            warnings.warn(
                f"the audio prompt is {seconds:.1f} s long; 5-10 s usually clones a voice best, and a long "
                "prompt leaves less room for the script",
                UserWarning,
                stacklevel=5,
            )


def _is_prompt_item(x) -> bool:
    if isinstance(x, (str, os.PathLike)):
        return True
    if torch.is_tensor(x) or isinstance(x, np.ndarray):
        # A single prompt: a 1-D waveform, or 2-D codes / (samples, channels) waveform.
        return x.ndim in (1, 2)
    return False


def _per_item(value, n: int, single: bool, name: str, is_item) -> list:
    """Broadcast a per-item option: None -> all None; one item -> a batch of one; else a list of n."""
    if value is None:
        return [None] * n
    if single or is_item(value):
        if n != 1:
            raise GenerationError(f"for a list of texts, give {name} as a list with one entry (or None) per text")
        return [value]
    items = list(value)
    if len(items) != n:
        raise GenerationError(f"got {len(items)} entries in {name} for {n} texts; give one (or None) per text")
    return items


def _progress_bar(enabled: bool, gen: GenerationConfig, jobs: list):
    """tqdm bar (stderr) over decoder steps showing audio frames, steps/s and the realtime factor;
    for a long script it counts all chunks' steps and names the chunk being spoken.

    Returns:
        (on_step, on_chunk, close) callbacks; None callbacks when disabled.
    """
    if not enabled:
        return None, None, lambda: None
    from tqdm.auto import tqdm

    chunked = any(len(chunks) > 1 for chunks, _ in jobs)
    start = min(sum(v.frames for v in voices) for _, voices in jobs)
    bar = tqdm(total=None if chunked else gen.max_tokens - start, unit="step", desc="generating",
               dynamic_ncols=True, mininterval=0.5)

    def on_step(t: int) -> None:
        bar.update(1)
        if bar.n % 16 == 0:
            rate = bar.format_dict.get("rate") or 0.0
            bar.set_postfix_str(f"{bar.n} steps, {rate / FRAME_RATE:.2f}x realtime", refresh=False)

    def on_chunk(k: int, n: int) -> None:
        if n > 1:
            bar.set_description(f"chunk {k + 1}/{n}", refresh=False)

    return on_step, on_chunk, bar.close
