"""The `Dia` facade: the one object users hold. Thin: it validates input and calls generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .config import DiaConfig
from .errors import GenerationError, ScriptError
from .generation.dia1 import Dia1Generator
from .generation.options import GenerationConfig
from .loading import load_model
from .runtime import resolve_device, resolve_dtype
from .text import tokenize, validate_script

DEFAULT_MODEL = "nari-labs/Dia-1.6B-0626"

PromptCodes = np.ndarray | torch.Tensor


class Dia:
    """A loaded Dia-1 model.

    Create it with `Dia.from_pretrained(...)`; then `generate_codes(text)` returns audio codes.
    """

    def __init__(self, loaded, device: torch.device, dtype: torch.dtype) -> None:
        self._loaded = loaded
        self.model = loaded.model
        self.config: DiaConfig = loaded.config
        self.device, self.dtype = device, dtype
        self.layout: str = loaded.layout
        self._generator = Dia1Generator(self.model, device, dtype)

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = DEFAULT_MODEL,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        quantize: str | None = None,
    ) -> "Dia":
        """Load a Dia-1 model.

        Args:
            model: a hub id (e.g. "nari-labs/Dia-1.6B-0626", downloaded once and cached), a local
                directory with config.json and model.safetensors / dia-v0_1.pth, or a preset
                ("tiny-random", "dia-1.6b-random").
            device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
            dtype: "auto" (bfloat16 on CUDA, float32 on CPU), "float32", "bfloat16", "float16".
            quantize: None, "int8" (per-channel) or "int4" (group-wise) weight-only quantization
                of the decoder's linear layers (see fastdia.quant).
        """
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        loaded = load_model(model, dev, dt)
        if quantize is not None:
            from .quant import quantize_model

            quantize_model(loaded.model, quantize)
        return cls(loaded, dev, dt)

    # ------------------------------------------------------------------ info
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def __repr__(self) -> str:
        return (f"Dia(model={self._loaded.source!r}, layout={self.layout!r}, device={str(self.device)!r}, "
                f"dtype={str(self.dtype).removeprefix('torch.')!r})")

    # ------------------------------------------------------------------ generation
    def generation_config(self, **sampling: Any) -> GenerationConfig:
        """The defaults with `sampling` keywords applied (validated)."""
        return GenerationConfig().with_overrides(**sampling)

    def generate_codes(
        self,
        text: str | Sequence[str],
        *,
        audio_prompt: PromptCodes | Sequence[PromptCodes | None] | None = None,
        progress: bool = False,
        **sampling: Any,
    ) -> np.ndarray | list[np.ndarray]:
        """Generate audio codes for a script, or for a list of scripts as one batch.

        Args:
            text: a script such as "[S1] Hello. [S2] Hi!", or a list of them.
            audio_prompt: codes `[P, 9]` (0..1023) continuing from which to generate, or one per
                item (None for no prompt) for a list of texts.
            progress: show a progress bar.
            **sampling: max_tokens, cfg_scale, temperature, top_p, cfg_filter_top_k, seed
                (see GenerationConfig).

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
        for i, t in enumerate(texts):
            validate_script(t, what="script" if single else f"script {i}")
        prompts = self._prompt_list(audio_prompt, len(texts), single)
        tokens = [tokenize(t) for t in texts]
        on_step, close = self._progress(progress, gen)
        try:
            with torch.inference_mode():
                codes = self._generator.generate(tokens, prompts, gen, on_step=on_step)
        finally:
            close()
        out = [c.cpu().numpy().astype(np.int64) for c in codes]
        return out[0] if single else out

    def _prompt_list(self, audio_prompt, n: int, single: bool) -> list[torch.Tensor | None]:
        if audio_prompt is None:
            return [None] * n
        if single:
            items = [audio_prompt]
        elif _is_codes(audio_prompt):
            if n != 1:
                raise GenerationError(
                    "for a list of texts, give audio_prompt as a list with one entry (or None) per text"
                )
            items = [audio_prompt]
        else:
            items = list(audio_prompt)
            if len(items) != n:
                raise GenerationError(f"got {len(items)} audio prompts for {n} texts; give one (or None) per text")
        return [None if p is None else self._check_codes(p, i) for i, p in enumerate(items)]

    def _check_codes(self, codes: PromptCodes, i: int) -> torch.Tensor:
        c = self.config.n_channels
        t = torch.as_tensor(np.asarray(codes) if not torch.is_tensor(codes) else codes)
        if t.ndim != 2 or t.shape[1] != c:
            raise GenerationError(f"audio prompt {i}: expected codes of shape [P, {c}], got {list(t.shape)}")
        if t.is_floating_point() or t.dtype == torch.bool:
            raise GenerationError(f"audio prompt {i}: codes must be integers, got {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.config.eos_id):
            raise GenerationError(f"audio prompt {i}: codes must be in 0..{self.config.eos_id - 1}")
        if t.shape[0] == 0:
            return None
        return t.to(self.device, torch.long)

    def _progress(self, enabled: bool, gen: GenerationConfig):
        if not enabled:
            return None, lambda: None
        from tqdm.auto import tqdm

        bar = tqdm(total=gen.max_tokens, unit="step", desc="generating", leave=False)

        def on_step(t: int) -> None:
            bar.n = t
            bar.refresh() if t % 16 == 0 else None

        return on_step, bar.close


def _is_codes(x) -> bool:
    return (torch.is_tensor(x) or isinstance(x, np.ndarray)) and getattr(x, "ndim", 0) == 2
