"""The `Dia` facade: the one object users hold. Thin: it validates input and calls generation."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .backends.device import resolve_device, resolve_dtype
from .checkpoints.dia1_load import _choose_files as choose_files
from .checkpoints.dia1_load import load_model, source_parameters, source_quantization
from .checkpoints.hub import resolve_dir
from .config import PRESETS, DiaConfig
from .errors import AudioError, GenerationError, ScriptError
from .generation.dia1 import FRAME_RATE, Dia1Generator
from .generation.options import GenerationConfig
from .text import tokenize, validate_script

DEFAULT_MODEL = "nari-labs/Dia-1.6B-0626"
DEFAULT_CODEC = "descript/dac_44khz"

# A prompt longer than this usually makes cloning worse, not better (5-10 s works best).
PROMPT_WARN_SECONDS = 15.0

PromptCodes = np.ndarray | torch.Tensor
# An audio prompt: a file path, a float waveform (with sample_rate), or int codes [P, 9].
AudioPrompt = str | os.PathLike | np.ndarray | torch.Tensor


class NoiseModelWarning(UserWarning):
    """The model is a random preset: its audio is noise, useful only for trials."""


class Dia:
    """A loaded Dia-1 model and its codec.

    Create it with `Dia.from_pretrained(...)`; then `generate(text)` returns a waveform at
    `sample_rate`, `generate_codes(text)` the audio codes.
    """

    def __init__(self, loaded, device: torch.device, dtype: torch.dtype, codec: str | Path | None = None) -> None:
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

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = DEFAULT_MODEL,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        quantize: str | None = None,
        codec: str | Path | None = None,
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
        """
        from .quant.modules import check_mode

        dev = resolve_device(device)
        mode = check_mode(quantize)
        if str(model) not in PRESETS and not Path(model).expanduser().exists():
            # A hub id: fetch it first, so dtype "auto" can see the model's size.
            model = resolve_dir(model, choose_files, what="model")
        # A checkpoint saved by `fastdia convert --quantize` is quantized whatever `quantize` says.
        dt = resolve_dtype(dtype, dev, source_parameters(model), mode or source_quantization(model))
        # Quantized models are built tensor by tensor, never holding a float copy of the whole.
        loaded = load_model(model, dev, dt, quantize=mode)
        return cls(loaded, dev, dt, codec=codec)

    # ------------------------------------------------------------------ info
    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz (44100 for DAC 44.1 kHz)."""
        return self._codec.sample_rate if self._codec is not None else 44100

    @property
    def codec(self):
        """The DAC codec, loaded on first use."""
        if self._codec is None:
            from .codecs.dac import DAC

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
        from .audio import check_output_path, normalize_loudness, write_audio

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
        progress: bool = False,
        **sampling: Any,
    ) -> np.ndarray | list[np.ndarray]:
        """Speak a script (or a list of scripts, as one batch).

        Args:
            text: a script such as "[S1] Hello. [S2] Hi! (laughs)", or a list of them.
            audio_prompt: a voice to continue from: an audio file path, a float waveform
                (give `sample_rate`), or codes `[P, 9]`; one per text (or None) for a list.
            prompt_text: the transcript of the audio prompt, with speaker tags; it is placed
                before the script, as the model expects. Only the new audio is returned.
            sample_rate: the rate of a waveform `audio_prompt`.
            progress: show a progress bar (frames, steps/s, realtime factor).
            **sampling: max_tokens, cfg_scale, temperature, top_p, cfg_filter_top_k, seed.

        Returns:
            np.float32 mono waveform at `self.sample_rate` (a list for a list of texts).
        """
        codes = self.generate_codes(text, audio_prompt=audio_prompt, prompt_text=prompt_text,
                                    sample_rate=sample_rate, progress=progress, **sampling)
        if self.is_random:
            warnings.warn("this is a random-weight preset: its audio is noise, useful only for trials",
                          NoiseModelWarning, stacklevel=2)
        return self.decode(codes)

    def generate_codes(
        self,
        text: str | Sequence[str],
        *,
        audio_prompt: AudioPrompt | Sequence[AudioPrompt | None] | None = None,
        prompt_text: str | Sequence[str | None] | None = None,
        sample_rate: int | None = None,
        progress: bool = False,
        **sampling: Any,
    ) -> np.ndarray | list[np.ndarray]:
        """Generate audio codes for a script, or for a list of scripts as one batch.

        Takes the same arguments as `generate`.

        Returns:
            np.int64 `[T, 9]` codes (a list of them for a list of texts): only new frames, the
            prompt and the end-of-speech marker excluded.
        """
        gen = self.generation_config(**sampling)
        single = isinstance(text, str)
        if not single and not isinstance(text, (list, tuple)):
            raise ScriptError(f"the script must be a string (or a list of strings), got {type(text).__name__}")
        texts = [text] if single else list(text)
        if not texts:
            raise GenerationError("no texts given")
        transcripts = _per_item(prompt_text, len(texts), single, "prompt_text", is_item=lambda x: isinstance(x, str))
        full_texts = []
        for i, (t, pt) in enumerate(zip(texts, transcripts)):
            name = "script" if single else f"script {i}"
            validate_script(t, what=name)
            if pt is not None:
                validate_script(pt, what="prompt_text" if single else f"prompt_text {i}")
                t = pt.strip() + " " + t.strip()
                validate_script(t, what=f"prompt_text + {name}")
            full_texts.append(t)
        prompts = [None if p is None else self._prompt_codes(p, sample_rate, i)
                   for i, p in enumerate(_per_item(audio_prompt, len(texts), single, "audio_prompt", _is_prompt_item))]
        for i, (p, pt) in enumerate(zip(prompts, transcripts)):
            if pt is not None and p is None:
                raise GenerationError(f"prompt_text was given{'' if single else f' for item {i}'} without an audio_prompt")
            if p is not None:
                self._warn_about_prompt(p, gen, i)
        tokens = [tokenize(t) for t in full_texts]
        on_step, close = _progress_bar(progress, gen, prompts)
        try:
            with torch.inference_mode():
                codes = self._generator.generate(tokens, prompts, gen, on_step=on_step)
        finally:
            close()
        out = [c.cpu().numpy().astype(np.int64) for c in codes]
        return out[0] if single else out

    # ------------------------------------------------------------------ prompts
    def _prompt_codes(self, prompt: AudioPrompt, sample_rate: int | None, i: int) -> torch.Tensor | None:
        """Any accepted prompt form -> codes `(P, 9)` long on our device (None if empty)."""
        if isinstance(prompt, (str, os.PathLike)):
            from .audio import read_audio

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

    def _warn_about_prompt(self, codes: torch.Tensor, gen: GenerationConfig, i: int) -> None:
        frames = codes.shape[0]
        seconds = frames / FRAME_RATE
        # Too little room is an error raised by the generator; here only the warnings.
        room = gen.max_tokens - (1 + frames + self.config.max_delay)
        if 0 < room < FRAME_RATE:
            warnings.warn(f"the audio prompt leaves only {room / FRAME_RATE:.2f} s for the script within "
                          f"max_tokens={gen.max_tokens}", UserWarning, stacklevel=4)
        if seconds > PROMPT_WARN_SECONDS:
            warnings.warn(
                f"the audio prompt is {seconds:.1f} s long; 5-10 s usually clones a voice best, and a long "
                "prompt leaves less room for the script",
                UserWarning,
                stacklevel=4,
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


def _progress_bar(enabled: bool, gen: GenerationConfig, prompts: list):
    """tqdm bar over decoder steps showing audio frames, steps/s and the realtime factor."""
    if not enabled:
        return None, lambda: None
    from tqdm.auto import tqdm

    start = min(1 + (0 if p is None else p.shape[0]) for p in prompts) - 1
    bar = tqdm(total=gen.max_tokens - start, unit="step", desc="generating", dynamic_ncols=True, mininterval=0.5)

    def on_step(t: int) -> None:
        bar.update(1)
        if bar.n % 16 == 0:
            rate = bar.format_dict.get("rate") or 0.0
            bar.set_postfix_str(f"{bar.n} frames, {rate / FRAME_RATE:.2f}x realtime", refresh=False)

    return on_step, bar.close
