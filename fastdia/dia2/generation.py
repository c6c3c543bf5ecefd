"""Dia2 generation: CFG rows, the per-step order of spec 5.4, voice-prefix warm-up, output assembly.

One script is two decoder rows (row 0 conditional, row 1 unconditional: its text is always
(zero, pad)), always, even at cfg_scale 1 (spec 5.2), so a step has the same shape whatever the
options. Each step t:

  1. the decoder reads the text chosen at t-1 and the audio of delayed column t (audio BOS for a
     codebook whose delay has not elapsed) and gives action logits, codebook-0 logits, a hidden;
  2. the action (pad / new word) is sampled and the text state machine turns it into the text
     of step t+1 (fastdia.dia2.state);
  3. codebook 0 of delayed column t+1 is sampled from the guided head (codec ids only), then the
     depformer's stages sample codebooks 1..C-1 one after another, each fed the previous one.

After end of speech the loop runs `max_delay + 6` more steps so every codebook's last frame is
written, then the delayed buffer is undelayed and cropped. What the reference lacks and fastdia
adds: a seed (counter-based draws, fastdia.nn.rng: each a function of the seed, the step and the
choice, so a seed fixes the audio on every path and in any batch) and
a step limit that is an option. Greedy (temperature 0) output equals the reference exactly
(tests/test_dia2_generation.py, against the golden fixtures).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field, fields, replace
from typing import Iterator

import torch

from ..nn.rng import uniform_at, uniform_one
from .config import Dia2Config
from ..errors import GenerationError
from .model import Dia2Model
from .text import FRAME_RATE, Dia2TextIds, Dia2Tokenizer, PrefixPlan, ScriptEntry, output_crop, word_timestamps
from .state import MAX_PADDING, Dia2TextState, TextStarvedError

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


# Counter-based draws (fastdia.nn.rng): a script's uniform for step t is keyed by its seed, t, one
# of these streams and an index (the codebook for the depformer's stages), so no draw depends on
# how many were made before it, on the path (one-shot, stream, batch slot) or on the batch.
ACTION_STREAM, CB0_STREAM, STAGE_STREAM = 1, 2, 3


def sample(logits: torch.Tensor, temperature: float, top_k: int, u: float | None) -> torch.Tensor:
    """One id from `(V,)` logits: argmax at temperature 0, else softmax(logits / T) restricted to
    the top_k most likely and drawn by inverting its CDF at the uniform `u` (the reference's
    sampler, with a counter-based draw)."""
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
    cdf = torch.cumsum(p.double() / total.double(), dim=0)
    index = int((cdf < u).sum())  # the first id whose CDF reaches u
    nonzero = torch.nonzero(p > 0).flatten()
    return nonzero[-1] if index > int(nonzero[-1]) else torch.tensor(index, device=p.device)


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
        self._delay = torch.tensor(self.delay, device=device)
        # Delayed column t + 1 of codebook c >= 1 is read (as decoder input or as audio) only from
        # column delay[c] on: before that the decoder is fed audio BOS and the undelay skips it.
        # A step whose column lies before every depformer codebook's delay (the first 17 steps
        # with the 2B delays 16, 18, ..., 18) needs no depformer stage: skipping them changes no
        # audio, word or step, and takes most of the time to first audio off.
        self.dep_from = min(self.delay[1:], default=0) - 1  # first loop step whose stages are used
        # Sampled depformer codebooks: one C call on a CPU with fastdia's kernels (the torch
        # sampler's distribution), else torch. Greedy decoding takes torch's argmax stage by
        # stage, and inside the C frame (rest_of_frame) a C pick equal to it bit for bit.
        from ..backends.cpu import kernels as cpu_kernels

        self._c_draw = cpu_kernels.cfg_draw if device.type == "cpu" and cpu_kernels.available() else None
        # The decoder step and the depformer stage: fastdia's fused CPU path where it applies,
        # else the model's own forward (same signatures), chosen once here.
        from ..backends.cpu import dia2_fused

        # `frame`: stages 1.. of a frame with their draws in one call, where the fused path has it;
        # used only while `stage` is still that path's (a caller that swaps `stage` sees every stage).
        self.frame = self._frame_stage = None
        if hasattr(model, "step_functions"):  # an exported model (fastdia.backends.onnx) brings its own
            self.transformer, self.stage = model.step_functions()
        elif dia2_fused.supported(model, device):
            fused = dia2_fused.FusedDia2(model)
            self.transformer, self.stage = fused.transformer, fused.stage
            self.frame, self._frame_stage = fused.frame, fused.stage
        else:
            self.transformer, self.stage = model.transformer, model.depformer.stage

    @torch.inference_mode()
    def generate(self, entries: list[ScriptEntry], gen: Dia2GenerationConfig,
                 prefix: Prefix | None = None) -> Dia2Result:
        """Speak parsed script `entries` (fastdia.dia2.text.parse_script), optionally after a prefix."""
        run = self.start(gen, prefix, entries=entries)
        for _ in self.steps(run):
            pass
        return self.finish(run)

    @torch.inference_mode()
    def stream(self, gen: Dia2GenerationConfig, prefix: Prefix | None = None,
               entries: list[ScriptEntry] | None = None, text: Iterator[str] | None = None,
               tokenizer: Dia2Tokenizer | None = None) -> Iterator[tuple[torch.Tensor, list[tuple[str, float]]]]:
        """Yield `(codes (n, C), words)` as aligned frames become final, with the words (and their
        times in the output, seconds) that start in them; joined, exactly `generate`'s result.

        The script is either parsed `entries` or `text`, an iterator of pieces read as the
        state machine needs words (its end ends the speech), parsed with `tokenizer`.
        """
        run = self.start(gen, prefix, entries=entries, text=text, tokenizer=tokenizer)
        for t in self.steps(run):
            out = self.emit(run, t)
            if out is not None:
                yield out
        self.finish(run)
        out = self.emit_tail(run)
        if out is not None:
            yield out

    def emit(self, run: "_Run", t: int) -> tuple[torch.Tensor, list[tuple[str, float]]] | None:
        """After loop step t: the aligned frames `(n, C)` that became final and the words that
        start in them, or None (nothing new, or the crop is not known yet)."""
        crop = self._crop(run, final=False)
        if crop is None:
            return None
        run.emitted = crop if run.emitted is None else run.emitted
        ready = t + 2 - self.max_delay  # aligned frames 0..ready-1 are complete after step t
        if ready <= run.emitted:
            return None
        run.said, words = self._words(run, crop, run.said, ready)
        codes = self._aligned(run, run.emitted, ready).T
        run.emitted = ready
        return codes, words

    def emit_tail(self, run: "_Run") -> tuple[torch.Tensor, list[tuple[str, float]]] | None:
        """After `finish`: the rest of the frames and words (None if nothing is left)."""
        result = run.result
        start = result.crop if run.emitted is None else run.emitted
        run.said, words = self._words(run, result.crop, run.said, None)
        tail = result.extra["aligned"][:, start:].T
        return (tail, words) if tail.shape[0] or words else None

    # ------------------------------------------------------------------ the loop, in pieces
    def start(self, gen: Dia2GenerationConfig, prefix: Prefix | None = None, entries: list[ScriptEntry] | None = None,
              text: Iterator[str] | None = None, tokenizer: Dia2Tokenizer | None = None,
              own_caches: bool = True) -> "_Run":
        """Allocate a run: buffer, caches (unless a batch provides them), the text state; the
        prefix warm-up happens in `steps`."""
        cfg, dev, c_n = self.cfg, self.device, self.n_codebooks
        data = cfg.data
        seed = (gen.seed if gen.seed is not None else secrets.randbits(62)) % SEED_MODULUS
        streamed = text is not None
        state = Dia2TextState(self.ids, second_stream_ahead=data.second_stream_ahead,
                              initial_padding=gen.initial_padding, entries=() if streamed else entries,
                              prefix_entries=prefix.plan.entries if prefix else (),
                              tokenizer=tokenizer if streamed else None, input_complete=not streamed)
        p0 = 0 if prefix is None else prefix.plan.frames_total
        p_cols = 0 if prefix is None else p0 + self.max_delay
        max_steps = gen.max_steps or cfg.runtime.max_context_steps
        total = max_steps + p_cols + 1
        buffer = torch.full((c_n, total), UNWRITTEN, dtype=torch.long, device=dev)  # delayed, row 0 = row 1
        if prefix is not None:
            buffer[:, :p_cols] = data.audio_pad_token_id
            for c, d in enumerate(self.delay):
                buffer[c, d:d + p0] = prefix.codes[c].to(dev)
        tokens = torch.full((2, 1, c_n + 2), data.text_pad_token_id, dtype=torch.long, device=dev)
        tokens[0, 0, 0], tokens[1, 0, 0] = self.ids.bos, self.ids.zero
        return _Run(gen=gen, prefix=prefix, state=state, seed=seed, buffer=buffer, tokens=tokens,
                    cache=self.model.new_decoder_cache(2, total, dev) if own_caches else None,
                    dep_cache=self.model.new_depformer_cache(2, dev) if own_caches else None, p0=p0, total=total, max_steps=max_steps,
                    start=p0 - 1 if prefix is not None else 0, text=text)

    def steps(self, run: "_Run") -> Iterator[int]:
        """Warm up on the prefix, then run loop steps until the flush ends; yields each loop step t."""
        for t in range(run.p0):  # spec 6: prefix frames fed, prefix words forced, nothing sampled
            self._decode(run, t)
            self.warm(run, t)
        for t in range(run.start, run.start + run.max_steps):
            if self.done(run, t):
                break
            run.last = t
            self._step(run, t)
            yield t

    def done(self, run: "_Run", t: int) -> bool:
        """Whether the loop ends before step t (the flush after end of speech is over, or the
        buffer is full; the step limit is the caller's range)."""
        return (run.cutoff is not None and t >= run.cutoff) or t + 1 >= run.total

    def finish(self, run: "_Run") -> Dia2Result:
        """Undelay and crop what the loop wrote (spec 5.6)."""
        cols = run.last + 2
        delayed = run.buffer[:, :cols]
        delayed = torch.where(delayed == UNWRITTEN, self.cfg.data.audio_pad_token_id, delayed)
        aligned = self._aligned(run, 0, cols - self.max_delay)
        crop = self._crop(run, final=True)
        if crop >= aligned.shape[1]:
            crop = 0
        state = run.state
        skip = 0 if run.include_prefix else state.num_prefix_entries
        run.result = Dia2Result(codes=aligned[:, crop:].T.contiguous(),
                          timestamps=word_timestamps(state.transcript, crop, skip_words=skip),
                          transcript=[(w.text, w.step) for w in state.transcript], start_step=run.start,
                          end_step=state.end_step, last_step=run.last, crop=crop,
                          extra={"delayed": delayed, "aligned": aligned})
        return run.result

    def _decode(self, run: "_Run", t: int):
        tokens, pos, slots = self.inputs(run, t)
        return self.transformer(tokens, pos, run.cache, slots=slots, kv_len=int(slots[0, 0]) + 1)

    def inputs(self, run: "_Run", t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decoder input of step t for the run's two rows: tokens `(2, 1, C + 2)`, positions
        and cache slots `(2, 1)`; takes the run's next cache slot."""
        column, tokens = run.buffer[:, t], run.tokens
        tokens[:, 0, 2:] = torch.where(self._delay > t, self.cfg.data.audio_bos_token_id, column)
        tokens[1, 0, 0], tokens[1, 0, 1] = self.ids.zero, self.cfg.data.text_pad_token_id
        pos = torch.full((2, 1), t, dtype=torch.long, device=self.device)
        slots = torch.full((2, 1), run.slot, dtype=torch.long, device=self.device)
        run.slot += 1
        return tokens, pos, slots

    def warm(self, run: "_Run", t: int) -> None:
        """Prefix warm-up after the decoder pass of step t: the prefix's word is forced."""
        out = run.state.force(t, run.prefix.plan.forced_new_word(t))
        self._set_text(run, out.main, out.second)

    @staticmethod
    def _set_text(run: "_Run", main: int, second: int) -> None:
        run.tokens[0, 0, 0], run.tokens[0, 0, 1] = main, second

    def _step(self, run: "_Run", t: int):
        """One loop step (spec 5.4): decoder, action -> text state, codebook 0, depformer stages."""
        dec = self._decode(run, t)
        out, token, text = self.head(run, t, dec.action_logits[:, 0], dec.cb0_logits[:, 0])
        if t < self.dep_from:
            self.skip_stages(run, t)
            return out
        hidden = dec.hidden[:, 0]  # (2, D)
        token = self.pick(run, t, 1, self.stage(0, hidden, token.expand(2), run.dep_cache, text))
        if self.rest_of_frame(hidden, token.reshape(1).expand(2).contiguous(), run.dep_cache, [(0, run, t)]):
            return out
        for s in range(1, self.n_codebooks - 1):
            token = self.pick(run, t, s + 1, self.stage(s, hidden, token.expand(2), run.dep_cache))
        return out

    def rest_of_frame(self, hidden: torch.Tensor, token: torch.Tensor, cache, members: list) -> bool:
        """Depformer stages 1.. of a frame and their picks in one call, where the fused CPU path
        has it (`FusedDia2.frame`) and `stage` is still that path's own (a caller that swaps it
        sees every stage). The same tokens as `stage` then `pick` per stage: a sampling member
        gets the same C draw fed the same uniforms (the counter-based ones `pick` draws for each
        codebook); a greedy one the C pick that equals torch's argmax
        bit for bit, and uses no uniform, as `pick` does not. `token` (rows,):
        what each row's stage 1 reads (updated in place); members: [(a member's first row, its
        run, its step t)]. False: nothing was done."""
        if not members or self.frame is None or self.stage != self._frame_stage or self._c_draw is None:
            return False
        stages = self.n_codebooks - 2

        def uniforms() -> torch.Tensor:  # (members, stages): what `pick` draws for codebooks 2..
            seeds = torch.tensor([run.seed for _, run, _ in members])
            steps = torch.tensor([t for _, _, t in members])
            codebooks = torch.arange(2, 2 + stages).expand(len(members), stages)
            return uniform_at(seeds, steps, STAGE_STREAM, codebooks, torch.float64)

        draws = [(row, run.gen.cfg_scale, run.gen.cfg_filter_k, run.gen.temperature, run.gen.top_k)
                 for row, run, _ in members]
        tokens = self.frame(1, hidden, token, cache, draws, uniforms)
        if tokens is None:
            return False
        for j, (_, run, t) in enumerate(members):
            run.buffer[2:, t + 1] = tokens[j]
        return True

    def head(self, run: "_Run", t: int, action_logits: torch.Tensor, cb0_logits: torch.Tensor):
        """From the decoder's `(2, V)` action and codebook-0 logits of step t: the action through
        the text state machine, then codebook 0. Returns (state output, codebook-0 token, the text
        the depformer's first stage reads, or None)."""
        gen, data = run.gen, self.cfg.data
        action = int(sample(cfg_filter(action_logits, gen.cfg_scale, gen.cfg_filter_k),
                            gen.text_temperature, gen.top_k, uniform_one(run.seed, t, ACTION_STREAM)))
        while True:
            try:
                out = run.state.step(t, action)
                break
            except TextStarvedError:  # streamed text: read on until this step can be decided
                piece = next(run.text, None) if run.text is not None else None
                if piece is None:
                    run.state.end_input()
                else:
                    run.state.append_text(piece)
        self._set_text(run, out.main, out.second)
        cb0 = cfg_filter(cb0_logits, gen.cfg_scale, gen.cfg_filter_k).clone()
        cb0[data.codebook_size:] = float("-inf")  # BOS / pad are never sampled
        token = sample(cb0, gen.temperature, gen.top_k, uniform_one(run.seed, t, CB0_STREAM))
        run.buffer[0, t + 1] = token
        text = None
        if self.model.depformer.text_embed is not None:  # both CFG rows get the conditional row's text
            text = (run.tokens[0, 0, 0].expand(2), run.tokens[0, 0, 1].expand(2))
        if out.end_of_speech:
            run.cutoff = t + self.flush_tail
        return out, token, text

    def skip_stages(self, run: "_Run", t: int) -> None:
        """Step t < `dep_from`: codebooks 1.. of column t + 1 are never read; they hold audio BOS,
        what the decoder sees there. (The reference samples them anyway, so its delayed buffer
        differs in these columns only; its audio codes do not.)"""
        run.buffer[1:, t + 1] = self.cfg.data.audio_bos_token_id

    def pick(self, run: "_Run", t: int, codebook: int, logits: torch.Tensor) -> torch.Tensor:
        """Sample codebook `codebook` of column t + 1 from a depformer stage's `(2, V)` logits."""
        gen = run.gen
        u = uniform_one(run.seed, t, STAGE_STREAM, codebook) if gen.temperature > 0 else None
        if self._c_draw and u is not None and logits.dtype == torch.float32 and logits.device.type == "cpu":
            token = torch.tensor(self._c_draw(logits, gen.cfg_scale, gen.cfg_filter_k, gen.temperature, gen.top_k, u))
        else:
            token = sample(cfg_filter(logits, gen.cfg_scale, gen.cfg_filter_k), gen.temperature, gen.top_k, u)
        run.buffer[codebook, t + 1] = token
        return token

    def _aligned(self, run: "_Run", a: int, b: int) -> torch.Tensor:
        """Undelayed frames a..b-1 `(C, b - a)`: aligned[c, f] = delayed[c, f + delay[c]]."""
        rows = [run.buffer[c, a + d: b + d] for c, d in enumerate(self.delay)]
        aligned = torch.stack(rows)
        return torch.where(aligned == UNWRITTEN, self.cfg.data.audio_pad_token_id, aligned)

    def _crop(self, run: "_Run", final: bool) -> int | None:
        """The output crop, or None while it is not known yet (k = 0 before the first word)."""
        state = run.state
        if not final and not run.include_prefix and self.cfg.data.second_stream_ahead == 0 \
                and state.first_main_new_word_step is None:
            return None
        return output_crop(run.start, state.first_main_new_word_step, run.gen.initial_padding, run.include_prefix)

    def _words(self, run: "_Run", crop: int, said: int, ready: int | None) -> tuple[int, list[tuple[str, float]]]:
        """Timestamps (word, seconds) not given yet whose frame is below `ready` (all if None)."""
        skip = 0 if run.include_prefix else run.state.num_prefix_entries
        stamps = word_timestamps(run.state.transcript, crop, skip_words=skip)
        new = [w for w in stamps[said:] if ready is None or w[1] * FRAME_RATE + crop < ready]
        return said + len(new), new


@dataclass
class _Run:
    """The state of one generation between steps (one script, two CFG rows)."""

    gen: Dia2GenerationConfig
    prefix: Prefix | None
    state: Dia2TextState
    seed: int  # its counter-based draws' seed (fastdia.nn.rng)
    buffer: torch.Tensor  # (C, total) delayed codes
    tokens: torch.Tensor  # (2, 1, C + 2) the next decoder input
    cache: object
    dep_cache: object
    p0: int
    total: int
    max_steps: int
    start: int
    text: Iterator[str] | None = None
    slot: int = 0
    last: int = 0
    cutoff: int | None = None  # the loop's last step + 1, once end of speech is known
    emitted: int | None = None  # streaming: the next aligned frame to hand out (once the crop is known)
    said: int = 0  # streaming: words handed out
    result: "Dia2Result | None" = None

    @property
    def include_prefix(self) -> bool:
        return self.prefix is not None and self.prefix.include_audio
