"""Sampling options, validated once, as a frozen dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from ..errors import GenerationError


MAX_SETTING = 1000.0  # the largest cfg_scale / temperature accepted


@dataclass(frozen=True)
class GenerationConfig:
    """Options of one generation; names and defaults follow the original `Dia.generate`.

    Attributes:
        max_tokens: absolute decoder position limit, counting the BOS frame and any audio
            prompt (at most the model's 3072, about 35 s of audio).
        cfg_scale: classifier-free guidance strength s in `cond + s * (cond - uncond)`.
        temperature: sampling temperature; 0 is greedy (argmax).
        top_p: nucleus sampling mass, in (0, 1].
        cfg_filter_top_k: how many of the guided logits' top ids are candidates (also the
            sampler's top-k).
        seed: makes sampling reproducible; item i of a batch uses seed + i. None draws a fresh one.
    """

    max_tokens: int = 3072
    cfg_scale: float = 3.0
    temperature: float = 1.2
    top_p: float = 0.95
    cfg_filter_top_k: int = 45
    seed: int | None = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> GenerationError:
            return GenerationError(msg)

        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise bad(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        for name in ("cfg_scale", "temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(f"{name} must be a finite number, got {value!r}")
            if abs(value) > MAX_SETTING:  # sampled in float32, per row; beyond this nothing changes
                raise bad(f"{name} must be at most {MAX_SETTING:g} in size, got {value!r}")
        if self.temperature < 0:
            raise bad(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise bad(f"top_p must be in (0, 1], got {self.top_p}")
        k = self.cfg_filter_top_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise bad(f"cfg_filter_top_k must be a positive integer, got {k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise bad(f"seed must be an integer or None, got {self.seed!r}")

    def with_overrides(self, **overrides) -> "GenerationConfig":
        """A copy with the given keyword options changed; unknown names are an error."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise GenerationError(
                f"unknown generation option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return replace(self, **{k: v for k, v in overrides.items()})
