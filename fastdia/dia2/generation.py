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
written, then the delayed buffer is undelayed and cropped. A step runs for a group of scripts at
once (`Dia2Group`, `Dia2Generator.step_group`): a one-shot generation is a group of one, the
server's slot batch (fastdia.dia2.slots) a group of many, through the same code. What the reference lacks and fastdia
adds: a seed (counter-based draws, fastdia.nn.rng: each a function of the seed, the step and the
choice, so a seed fixes the audio on every path and in any batch) and
a step limit that is an option. Greedy (temperature 0) output equals the reference exactly
(tests/test_dia2_generation.py, against the golden fixtures).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Iterator

import torch

from ..backends.cpu import dia2_fused
from ..backends.cpu import kernels as cpu_kernels
from ..nn.rng import uniform_at, uniform_one
from ..nn.sampling import cfg_pick_rows
from .config import Dia2Config
from .options import Dia2GenerationConfig, Dia2Result
from ..errors import GenerationError
from .model import Dia2Model
from .text import FRAME_RATE, Dia2TextIds, Dia2Tokenizer, PrefixPlan, ScriptEntry, output_crop, word_timestamps
from .state import MAX_PADDING, Dia2TextState, TextStarvedError

UNWRITTEN = -2  # delayed-buffer cells no step has written (become audio pad at the end)
SEED_MODULUS = 2**63


@dataclass(frozen=True)
class Prefix:
    """A voice prefix ready for the warm-up: the plan of its words and its codes `(C, P0)`."""

    plan: PrefixPlan
    codes: torch.Tensor  # (C, P0) long: speaker 1's frames then speaker 2's
    include_audio: bool = False


def cfg_filter(logits: torch.Tensor, scale: float, k: int) -> torch.Tensor:
    """`(2, V)` rows (cond, uncond) -> `(V,)` the conditional logits restricted to the top-k of the
    guided ones, `uncond + scale * (cond - uncond)` (ties may admit more); unchanged at scale 1.
    The reference's filter for one script, kept as the definition the batched picks
    (fastdia.nn.sampling.cfg_pick_rows, the C picks) are tested against."""
    cond = logits[0]
    if scale == 1.0:
        return cond
    guided = torch.lerp(logits[1], cond, scale)
    threshold = guided.topk(min(k, guided.shape[-1])).values[-1]
    return cond.masked_fill(guided < threshold, float("-inf"))


# Counter-based draws (fastdia.nn.rng): a script's uniforms for step t are keyed by its seed, t,
# this stream and an index (0: the action, 1 + c: codebook c), so no draw depends on how many were
# made before it, on the path (one-shot, stream, batch slot) or on the batch.
STEP_STREAM = 1


class Dia2Group:
    """The per-script tensors of scripts that step together, indexed by slot: a one-shot
    generation is a group of one, a slot batch (fastdia.dia2.slots) a group of `slots`. A step
    reads and writes them for every member at once (gathers and index writes, no Python per
    member); each run's `buffer` is a view of its slot's row.

    Attributes:
        buffer: `(S, C, T)` delayed codes.
        text: `(S, 2)` the conditional row's text tokens (main, second) for the next step.
        t, cache_slot: `(S,)` each slot's next step index and next decoder-cache slot.
        seeds: `(S,)` int64 counter-based draw seeds; the sampling settings `(S,)` each.
    """

    def __init__(self, slots: int, steps: int, n_codebooks: int, device: torch.device) -> None:
        long = dict(dtype=torch.long, device=device)
        self.buffer = torch.full((slots, n_codebooks, steps), UNWRITTEN, **long)
        self.text = torch.zeros((slots, 2), **long)
        self.t = torch.zeros(slots, **long)
        self.cache_slot = torch.zeros(slots, **long)
        self.seeds = torch.zeros(slots, **long)
        f32 = dict(dtype=torch.float32, device=device)
        self.scale = torch.ones(slots, **f32)
        self.cfg_k = torch.ones(slots, **long)
        self.text_temperature = torch.zeros(slots, **f32)
        self.temperature = torch.zeros(slots, **f32)
        self.top_k = torch.ones(slots, **long)
        self.widths = [1, 1]  # host ints: the members' largest cfg_filter_k and top_k
        self._all: dict[int, torch.Tensor] = {}

    def place(self, slot: int, run: "_Run") -> None:
        gen = run.gen
        self.seeds[slot] = run.seed
        self.scale[slot], self.cfg_k[slot] = gen.cfg_scale, gen.cfg_filter_k
        self.text_temperature[slot], self.temperature[slot] = gen.text_temperature, gen.temperature
        self.top_k[slot] = gen.top_k

    def index(self, slots: list[int]) -> torch.Tensor:
        """`slots` as an index tensor (the common case, every slot 0..n-1, kept)."""
        n = len(slots)
        if slots[-1] == n - 1:  # ascending and dense: 0..n-1
            if n not in self._all:
                self._all[n] = torch.arange(n, device=self.t.device)
            return self._all[n]
        return torch.tensor(slots, dtype=torch.long, device=self.t.device)


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
        self._uncond_text = torch.tensor([ids.zero, data.text_pad_token_id], device=device)  # CFG row's text
        # Delayed column t + 1 of codebook c >= 1 is read (as decoder input or as audio) only from
        # column delay[c] on: before that the decoder is fed audio BOS and the undelay skips it.
        # A step whose column lies before every depformer codebook's delay (the first 17 steps
        # with the 2B delays 16, 18, ..., 18) needs no depformer stage: skipping them changes no
        # audio, word or step, and takes most of the time to first audio off.
        self.dep_from = min(self.delay[1:], default=0) - 1  # first loop step whose stages are used
        # The picks of a step for all its scripts in one call: fastdia's C picks on a CPU with its
        # kernels (the torch picks' distribution, greedy bit for bit), else torch's.
        self._c_pick = cpu_kernels.cfg_pick_rows if device.type == "cpu" and cpu_kernels.available() else None
        # The decoder step and the depformer stage: fastdia's fused CPU path where it applies,
        # else the model's own forward (same signatures), chosen once here.
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
              group: Dia2Group | None = None, slot: int = 0) -> "_Run":
        """Set up a run in `slot` of `group` (a batch's; by default a group of one of its own, with
        its own caches): its buffer, the text state, its settings; the prefix warm-up happens in
        `steps` (or the batch's steps)."""
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
        own = group is None
        if own:
            group = Dia2Group(1, total, c_n, dev)
        elif total > group.buffer.shape[2]:
            raise GenerationError(f"this request needs {total} buffer columns; its batch holds {group.buffer.shape[2]}")
        buffer = group.buffer[slot, :, :total]  # (C, total) delayed, the same for both CFG rows
        group.buffer[slot] = UNWRITTEN
        if prefix is not None:
            buffer[:, :p_cols] = data.audio_pad_token_id
            for c, d in enumerate(self.delay):
                buffer[c, d:d + p0] = prefix.codes[c].to(dev)
        start = p0 - 1 if prefix is not None else 0
        run = _Run(gen=gen, prefix=prefix, state=state, seed=seed, buffer=buffer, group=group, index=slot,
                   cache=self.model.new_decoder_cache(2, total, dev) if own else None,
                   dep_cache=self.model.new_depformer_cache(2, dev) if own else None, p0=p0, total=total,
                   max_steps=max_steps, start=start, text=text, t=0 if p0 else start, warming=p0 > 0)
        group.place(slot, run)
        group.text[slot, 0], group.text[slot, 1] = self.ids.bos, data.text_pad_token_id
        group.t[slot], group.cache_slot[slot] = run.t, 0
        return run

    def steps(self, run: "_Run") -> Iterator[int]:
        """Warm up on the prefix, then run loop steps until the flush ends; yields each loop step t."""
        rows = [(0, run)]
        group = run.group
        group.widths = [run.gen.cfg_filter_k, run.gen.top_k]
        while run.warming:  # spec 6: prefix frames fed, prefix words forced, nothing sampled
            self.step_group(group, 2, run.cache, run.dep_cache, rows, kv_len=run.slot + 1)
        while not self.finished(run):
            t = run.t
            self.step_group(group, 2, run.cache, run.dep_cache, rows, kv_len=run.slot + 1)
            yield t

    def finished(self, run: "_Run") -> bool:
        """Whether the run's loop is over: its step limit, the flush after end of speech, or a full buffer."""
        return not run.warming and (run.t >= run.start + run.max_steps or self.done(run, run.t))

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

    # ------------------------------------------------------------------ one step of a group
    def inputs(self, group: Dia2Group, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decoder input of slots 0..n-1 at their own steps: tokens `(2n, 1, C + 2)` (row 2s
        conditional, 2s + 1 unconditional: text (zero, pad)), positions and cache slots `(2n, 1)`."""
        data = self.cfg.data
        t = group.t[:n]
        column = group.buffer[:n].gather(2, t.view(n, 1, 1).expand(n, self.n_codebooks, 1)).squeeze(2)  # (n, C)
        audio = torch.where(self._delay.view(1, -1) > t.view(n, 1), data.audio_bos_token_id, column)
        uncond = self._uncond_text.expand(n, 2)
        text = torch.stack((group.text[:n], uncond), dim=1)  # (n, 2, 2)
        tokens = torch.cat((text, audio.unsqueeze(1).expand(n, 2, self.n_codebooks)), dim=2).view(2 * n, 1, -1)
        pos = t.repeat_interleave(2).view(2 * n, 1)
        slots = group.cache_slot[:n].repeat_interleave(2).view(2 * n, 1)
        return tokens, pos, slots

    def step_group(self, group: Dia2Group, rows: int, cache, dep_cache, going: list[tuple[int, "_Run"]],
                   kv_len: int | None = None) -> None:
        """One step (spec 5.4) for the runs `going` [(slot, run)] of `group`, whose slots lie in
        the first `rows` // 2 (the decoder runs those rows; a slot that sits out is computed and
        writes its K/V only where its next real step writes anyway): one decoder call, the action
        and codebook-0 picks of every script in one call each, the text state machines (host
        Python per script: the one part that is not a tensor op), one call per depformer stage
        and its picks (or one C call for a frame's stages)."""
        tokens, pos, slots = self.inputs(group, rows // 2)
        dec = self.transformer(tokens, pos, cache, slots=slots, kv_len=kv_len)
        warming = [(s, run) for s, run in going if run.warming]
        looping = [(s, run) for s, run in going if not run.warming]
        texts: list[tuple[int, int, int]] = []
        for s, run in warming:  # the prefix's words are forced
            out = run.state.force(run.t, run.prefix.plan.forced_new_word(run.t))
            texts.append((s, out.main, out.second))
        if looping:
            u = self._uniforms(group, looping)
            self._heads(group, dec, looping, texts, u)
        if texts:
            idx = group.index([s for s, _, _ in texts])
            group.text[idx] = torch.tensor([[a, b] for _, a, b in texts], dtype=torch.long, device=self.device)
        if looping:
            dep = [(s, run) for s, run in looping if run.t >= self.dep_from]
            skip = [s for s, run in looping if run.t < self.dep_from]
            if skip:  # (Dia2Generator.skip_stages)
                idx = group.index(skip)
                group.buffer[idx, 1:, group.t[idx] + 1] = self.cfg.data.audio_bos_token_id
            if dep:
                if len(dep) < len(looping):
                    u = u[torch.tensor([run.t >= self.dep_from for _, run in looping], device=u.device)]
                self._depformer(group, dec.hidden[:, 0], rows, dep_cache, dep, u)
        idx = group.index([s for s, _ in going])
        group.t[idx] += 1
        group.cache_slot[idx] += 1
        for _, run in going:
            run.slot += 1
            if run.warming:
                run.t += 1
                if run.t >= run.p0:
                    run.warming, run.t = False, run.start
                    group.t[run.index] = run.start
            else:
                run.last = run.t
                run.t += 1

    def _uniforms(self, group: Dia2Group, looping: list) -> torch.Tensor:
        """`(scripts, C + 1)` float64: every uniform the step's picks use, per script (0: the action,
        1 + c: codebook c). One script computes them in Python integers (a few microseconds each
        instead of a few dozen tensor ops), more in one tensor call; the two agree bit for bit
        (fastdia.nn.rng.uniform_one, tests/test_rng.py)."""
        n = self.n_codebooks + 1
        if len(looping) == 1:
            run = looping[0][1]
            return torch.tensor([[uniform_one(run.seed, run.t, STEP_STREAM, i) for i in range(n)]],
                                dtype=torch.float64, device=self.device)
        idx = group.index([s for s, _ in looping])
        index = torch.arange(n, device=self.device).expand(len(looping), n)
        return uniform_at(group.seeds[idx], group.t[idx], STEP_STREAM, index, torch.float64)

    def _heads(self, group: Dia2Group, dec, looping: list, texts: list, u: torch.Tensor) -> None:
        """Action and codebook 0 for every looping script, then its text state machine."""
        data = self.cfg.data
        idx = group.index([s for s, _ in looping])
        t = group.t[idx]
        first = 2 * idx
        scale, cfg_k, top_k = group.scale[idx], group.cfg_k[idx], group.top_k[idx]
        actions = self.pick_rows(dec.action_logits[:, 0], first, 1 << 30, scale, cfg_k, group.text_temperature[idx],
                                 top_k, u[:, 0], group.widths)
        cb0 = self.pick_rows(dec.cb0_logits[:, 0], first, data.codebook_size, scale, cfg_k, group.temperature[idx],
                             top_k, u[:, 1], group.widths)
        group.buffer[idx, 0, t + 1] = cb0
        for (s, run), action in zip(looping, actions.tolist()):  # the one read back of a step
            out = self._advance_text(run, run.t, action)
            texts.append((s, out.main, out.second))

    def _advance_text(self, run: "_Run", t: int, action: int):
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
        if out.end_of_speech:
            run.cutoff = t + self.flush_tail
        return out

    def _depformer(self, group: Dia2Group, hidden: torch.Tensor, rows: int, cache, dep: list,
                   u: torch.Tensor) -> None:
        """Codebooks 1..C-1 of column t + 1 for the scripts `dep`: stage by stage, each stage one
        call for all rows and one pick call, or stages 1.. in one C call (`frame`)."""
        idx = group.index([s for s, _ in dep])
        t = group.t[idx]
        first = 2 * idx
        pair = torch.stack((first, first + 1), dim=1).view(-1)
        settings = (group.scale[idx], group.cfg_k[idx], group.temperature[idx], group.top_k[idx])
        token = torch.zeros(rows, dtype=torch.long, device=self.device)
        token[pair] = group.buffer[idx, 0, t + 1].repeat_interleave(2)
        text = None
        if self.model.depformer.text_embed is not None:  # both CFG rows read the conditional row's text
            both = group.text[:rows // 2].repeat_interleave(2, dim=0)
            text = (both[:, 0], both[:, 1])
        size = self.cfg.data.codebook_size
        for stage in range(self.n_codebooks - 1):
            logits = self.stage(stage, hidden, token, cache, text if stage == 0 else None)
            picked = self.pick_rows(logits, first, size, *settings, u[:, stage + 2],
                                    group.widths)
            group.buffer[idx, stage + 1, t + 1] = picked
            token = token.clone()
            token[pair] = picked.repeat_interleave(2)
            if stage == 0 and self._rest_of_frame(group, hidden, token, cache, dep, idx, t, u[:, 3:]):
                return

    def _rest_of_frame(self, group: Dia2Group, hidden, token, cache, dep, idx, t, u) -> bool:
        """Depformer stages 1.. of a frame and their picks in one call, where the fused CPU path
        has it (`FusedDia2.frame`) and `stage` is still that path's (a caller that swaps it sees
        every stage). The same tokens as stage then pick, stage by stage: a sampling script gets
        the same C draw fed the same counter-based uniforms; a greedy one the C pick that equals
        torch's argmax bit for bit. False: nothing was done."""
        if self.frame is None or self.stage != self._frame_stage or self._c_pick is None:
            return False
        draws = [(2 * s, run.gen.cfg_scale, run.gen.cfg_filter_k, run.gen.temperature, run.gen.top_k) for s, run in dep]
        tokens = self.frame(1, hidden, token, cache, draws, lambda: u)  # u: codebooks 2.. of each script
        if tokens is None:
            return False
        group.buffer[idx.view(-1, 1), torch.arange(2, self.n_codebooks).view(1, -1), (t + 1).view(-1, 1)] = tokens
        return True

    def pick_rows(self, logits: torch.Tensor, first: torch.Tensor, limit: int, scale, cfg_k, temperature, top_k,
                  u: torch.Tensor, widths: list[int]) -> torch.Tensor:
        """One pick per script from its pair of rows (fastdia.nn.sampling.cfg_pick_rows; fastdia's C
        picks where its kernels run)."""
        if self._c_pick is not None and logits.dtype == torch.float32 and logits.device.type == "cpu" \
                and logits.stride(-1) == 1:
            return self._c_pick(logits, first, limit, scale, cfg_k, temperature, top_k, u)
        return cfg_pick_rows(logits, first, min(limit, logits.shape[-1]), scale, cfg_k, temperature, top_k, u,
                             tuple(widths))

    # ------------------------------------------------------------------ output
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
    buffer: torch.Tensor  # (C, total) delayed codes: a view of its group's slot
    group: Dia2Group
    index: int  # its slot in the group
    cache: object
    dep_cache: object
    p0: int
    total: int
    max_steps: int
    start: int
    text: Iterator[str] | None = None
    t: int = 0  # its next step (warm-up steps 0..p0-1, then loop steps from `start`)
    warming: bool = False
    slot: int = 0  # its next decoder-cache slot
    last: int = 0
    cutoff: int | None = None  # the loop's last step + 1, once end of speech is known
    emitted: int | None = None  # streaming: the next aligned frame to hand out (once the crop is known)
    said: int = 0  # streaming: words handed out
    result: "Dia2Result | None" = None

    @property
    def include_prefix(self) -> bool:
        return self.prefix is not None and self.prefix.include_audio
