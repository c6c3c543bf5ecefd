"""Dia2 generation options, validated once, and what a generation returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import torch

from ..errors import GenerationError


MAX_SETTING = 1000.0  # the largest cfg_scale / temperature accepted


@dataclass(frozen=True)
class Dia2GenerationConfig:
    """Options of one Dia2 generation (spec 5.1 defaults; `seed` and `max_steps` are ours).

    Attributes:
        cfg_scale: guidance strength; 1.0 turns guidance off (the second row still runs).
        temperature: audio sampling temperature; 0 is greedy.
        text_temperature: action (pad / new word) sampling temperature; 0 is greedy.
        top_k: candidates kept by each sampler.
        cfg_filter_k: candidates kept by the guidance filter.
        seed: makes sampling reproducible (any int, reduced modulo 2**63); None draws one.
        max_steps: decoder steps at most (None: the model's `max_context_steps`).
        initial_padding: forced pad steps before the first word.
    """

    cfg_scale: float = 2.0
    temperature: float = 0.8
    text_temperature: float = 0.6
    top_k: int = 50
    cfg_filter_k: int = 50
    seed: int | None = None
    max_steps: int | None = None
    initial_padding: int = 2

    def __post_init__(self) -> None:
        for name in ("cfg_scale", "temperature", "text_temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise GenerationError(f"{name} must be a finite number >= 0, got {v!r}")
            if v > MAX_SETTING:  # sampled in float32, per script; beyond this nothing changes
                raise GenerationError(f"{name} must be at most {MAX_SETTING:g}, got {v!r}")
        if self.cfg_scale <= 0:
            raise GenerationError(f"cfg_scale must be > 0 (1 turns guidance off), got {self.cfg_scale}")
        for name in ("top_k", "cfg_filter_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise GenerationError(f"{name} must be a positive integer, got {v!r}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise GenerationError(f"max_steps must be a positive integer or None, got {self.max_steps!r}")
        if isinstance(self.initial_padding, bool) or not isinstance(self.initial_padding, int) \
                or self.initial_padding < 0:
            raise GenerationError(f"initial_padding must be an integer >= 0, got {self.initial_padding!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise GenerationError(f"seed must be an integer or None, got {self.seed!r}")

    def with_overrides(self, **overrides) -> "Dia2GenerationConfig":
        """A copy with the given keyword options changed; unknown names are an error."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise GenerationError(f"unknown generation option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return replace(self, **overrides)


@dataclass
class Dia2Result:
    """What one generation produced.

    Attributes:
        codes: `(F, C)` long, time-major codes for Mimi (cropped as the reference does).
        timestamps: (word, seconds) of each script word in the returned audio.
        transcript: (word, step) for every word, prefix words included.
        start_step, end_step, last_step, crop: the loop's bookkeeping (spec 5.6).
    """

    codes: torch.Tensor
    timestamps: list[tuple[str, float]]
    transcript: list[tuple[str, int]]
    start_step: int
    end_step: int | None
    last_step: int
    crop: int
    extra: dict = field(default_factory=dict)
