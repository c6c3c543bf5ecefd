"""Dia2 generation: CFG rows, the per-step order of spec 5.4, voice-prefix warm-up, output assembly.

One script is two decoder rows (row 0 conditional, row 1 unconditional: its text is always
(zero, pad)), always, even at cfg_scale 1 (spec 5.2), so a step has the same shape whatever the
options. Each step t:

  1. the decoder reads the text chosen at t-1 and the audio of delayed column t (audio BOS for a
     codebook whose delay has not elapsed) and gives action logits, codebook-0 logits, a hidden;
  2. the action (pad / new word) is sampled and the text state machine turns it into the text
     of step t+1 (fastdia.generation.dia2_state);
  3. codebook 0 of delayed column t+1 is sampled from the guided head (codec ids only), then the
     depformer's stages sample codebooks 1..C-1 one after another, each fed the previous one.

After end of speech the loop runs `max_delay + 6` more steps so every codebook's last frame is
written, then the delayed buffer is undelayed and cropped. What the reference lacks and fastdia
adds: a seed (one torch.Generator per call, drawn in a fixed order, so a seed fixes the audio) and
a step limit that is an option. Greedy (temperature 0) output equals the reference exactly
(tests/test_dia2_generation.py, against the golden fixtures).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field, fields, replace

import torch

from ..config_dia2 import Dia2Config
from ..errors import GenerationError
from ..models.dia2 import Dia2Model
from ..text_dia2 import Dia2TextIds, PrefixPlan, ScriptEntry, output_crop, word_timestamps
from .dia2_state import MAX_PADDING, Dia2TextState

UNWRITTEN = -2  # delayed-buffer cells no step has written (become audio pad at the end)
SEED_MODULUS = 2**63


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


@dataclass(frozen=True)
class Prefix:
    """A voice prefix ready for the warm-up: the plan of its words and its codes `(C, P0)`."""

    plan: PrefixPlan
    codes: torch.Tensor  # (C, P0) long: speaker 1's frames then speaker 2's
    include_audio: bool = False


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


def cfg_filter(logits: torch.Tensor, scale: float, k: int) -> torch.Tensor:
    """`(2, V)` rows (cond, uncond) -> `(V,)` the conditional logits restricted to the top-k of the
    guided ones, `uncond + scale * (cond - uncond)` (ties may admit more); unchanged at scale 1."""
    cond = logits[0]
    if scale == 1.0:
        return cond
    guided = torch.lerp(logits[1], cond, scale)
    threshold = guided.topk(min(k, guided.shape[-1])).values[-1]
    return cond.masked_fill(guided < threshold, float("-inf"))


def sample(logits: torch.Tensor, temperature: float, top_k: int, rng: torch.Generator | None) -> torch.Tensor:
    """One id from `(V,)` logits: argmax at temperature 0, else softmax(logits / T) restricted to
    the top_k most likely and drawn with `rng` (the reference's sampler, with our generator)."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax()
    p = torch.softmax(logits / temperature, dim=-1)
    p = torch.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0)
    if 0 < top_k < p.shape[-1]:
        top = p.topk(top_k)
        keep = torch.zeros_like(p).scatter(0, top.indices, top.values)
        p = keep
    total = p.sum()
    if not bool(total > 0):
        return torch.zeros((), dtype=torch.long, device=p.device)
    return torch.multinomial(p / total, 1, generator=rng)[0]


class Dia2Generator:
    """Runs Dia2 generation for one loaded model on one device."""

    def __init__(self, model: Dia2Model, device: torch.device, ids: Dia2TextIds) -> None:
        self.model = model
        self.cfg: Dia2Config = model.config
        self.device = device
        self.ids = ids
        data = self.cfg.data
        self.n_codebooks = data.n_codebooks
        self.delay = list(data.delay_pattern)
        self.max_delay = max(self.delay)
        self.flush_tail = self.max_delay + MAX_PADDING  # steps after end of speech (spec 5.4 step 11)

    @torch.inference_mode()
    def generate(self, entries: list[ScriptEntry], gen: Dia2GenerationConfig,
                 prefix: Prefix | None = None) -> Dia2Result:
        """Speak parsed script `entries` (fastdia.text_dia2.parse_script), optionally after a prefix."""
        cfg, dev, c_n = self.cfg, self.device, self.n_codebooks
        data = cfg.data
        model = self.model
        rng = None
        if gen.temperature > 0 or gen.text_temperature > 0:
            rng = torch.Generator(device=dev)
            rng.manual_seed((gen.seed if gen.seed is not None else secrets.randbits(62)) % SEED_MODULUS)
        state = Dia2TextState(self.ids, second_stream_ahead=data.second_stream_ahead,
                              initial_padding=gen.initial_padding, entries=entries,
                              prefix_entries=prefix.plan.entries if prefix else ())
        p0 = 0 if prefix is None else prefix.plan.frames_total
        p_cols = 0 if prefix is None else p0 + self.max_delay
        max_steps = gen.max_steps or cfg.runtime.max_context_steps
        total = max_steps + p_cols + 1
        buffer = torch.full((c_n, total), UNWRITTEN, dtype=torch.long, device=dev)  # delayed, row 0 = row 1
        if prefix is not None:
            buffer[:, :p_cols] = data.audio_pad_token_id
            for c, d in enumerate(self.delay):
                buffer[c, d:d + p0] = prefix.codes[c].to(dev)
        cache = model.new_decoder_cache(2, total, dev)
        dep_cache = model.new_depformer_cache(2, dev)
        tokens = torch.full((2, 1, c_n + 2), data.text_pad_token_id, dtype=torch.long, device=dev)
        tokens[0, 0, 0], tokens[1, 0, 0] = self.ids.bos, self.ids.zero
        delay = torch.tensor(self.delay, device=dev)
        audio_bos = data.audio_bos_token_id
        slot = 0

        def run_decoder(t: int):
            nonlocal slot
            column = buffer[:, t]
            tokens[:, 0, 2:] = torch.where(delay > t, audio_bos, column)
            tokens[1, 0, 0], tokens[1, 0, 1] = self.ids.zero, data.text_pad_token_id
            pos = torch.full((2, 1), t, dtype=torch.long, device=dev)
            slots = torch.full((2, 1), slot, dtype=torch.long, device=dev)
            out = model.transformer(tokens, pos, cache, slots=slots, kv_len=slot + 1)
            slot += 1
            return out

        def set_text(main: int, second: int) -> None:
            tokens[0, 0, 0], tokens[0, 0, 1] = main, second

        # Warm-up (spec 6): the prefix frames are fed and the prefix words forced; nothing sampled.
        for t in range(p0):
            run_decoder(t)
            out = state.force(t, prefix.plan.forced_new_word(t))
            set_text(out.main, out.second)

        start = p0 - 1 if prefix is not None else 0
        cutoff = None
        last = start
        for t in range(start, start + max_steps):
            if (cutoff is not None and t >= cutoff) or t + 1 >= total:
                break
            last = t
            dec = run_decoder(t)
            action = sample(cfg_filter(dec.action_logits[:, 0], gen.cfg_scale, gen.cfg_filter_k),
                            gen.text_temperature, gen.top_k, rng)
            out = state.step(t, int(action))
            set_text(out.main, out.second)
            cb0 = cfg_filter(dec.cb0_logits[:, 0], gen.cfg_scale, gen.cfg_filter_k).clone()
            cb0[data.codebook_size:] = float("-inf")  # BOS / pad are never sampled
            token = sample(cb0, gen.temperature, gen.top_k, rng)
            buffer[0, t + 1] = token
            hidden = dec.hidden[:, 0]  # (2, D)
            text = (tokens[:, 0, 0].clone(), tokens[:, 0, 1].clone())
            text[0][1], text[1][1] = text[0][0], text[1][0]  # both rows get the conditional text
            for s in range(c_n - 1):
                logits = model.depformer.stage(s, hidden, token.expand(2), dep_cache,
                                               text if s == 0 and model.depformer.text_embed is not None else None)
                token = sample(cfg_filter(logits, gen.cfg_scale, gen.cfg_filter_k), gen.temperature, gen.top_k, rng)
                buffer[s + 1, t + 1] = token
            if out.end_of_speech:
                cutoff = t + self.flush_tail

        cols = last + 2
        delayed = buffer[:, :cols]
        delayed = torch.where(delayed == UNWRITTEN, data.audio_pad_token_id, delayed)
        frames = cols - self.max_delay
        aligned = torch.stack([delayed[c, d:d + frames] for c, d in enumerate(self.delay)])  # (C, F)
        include = prefix.include_audio if prefix is not None else False
        crop = output_crop(start, state.first_main_new_word_step, gen.initial_padding, include)
        if crop >= aligned.shape[1]:
            crop = 0
        codes = aligned[:, crop:].T.contiguous()
        skip = 0 if include else state.num_prefix_entries
        transcript = [(w.text, w.step) for w in state.transcript]
        return Dia2Result(codes=codes, timestamps=word_timestamps(state.transcript, crop, skip_words=skip),
                          transcript=transcript, start_step=start, end_step=state.end_step, last_step=last,
                          crop=crop, extra={"delayed": delayed, "aligned": aligned})
