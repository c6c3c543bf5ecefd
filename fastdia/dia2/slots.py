"""Dia2 continuous batching: many scripts share each decoder pass and each depformer stage.

A `Dia2SlotBatch` owns one decoder cache and one depformer cache with two rows (the CFG pair) per
slot. A script joins between steps: `Dia2Generator.start` builds its run (text state, delayed
buffer, its own seed for its counter-based draws), and the run's rows are the slot's rows of the shared
caches. Each step then gathers the input of every member (a prefix warm-up step or a loop step,
each at its own position and cache slot), runs the decoder once for all of them, lets each member
sample its action and codebook 0 from its own rows (`Dia2Generator.head`, the very code a one-shot
generation runs), and runs each depformer stage once for all members, each sampling its codebook
from its rows (`Dia2Generator.pick`). A finished member leaves at once.

A script fed text live (the server's WebSocket) may have to wait for words: while its next step
could need a word it has not received, it sits the step out (its rows are computed but nothing of
it is written where it would be read) and resumes as soon as text or the end of input arrives.

Results do not depend on the company: sampling is per member, attention is per row and over its
own cache slots, and the matrix products either run on fastdia's row-independent CPU kernels or
cover a multiple of ROW_GRANULE rows, the row counts whose BLAS products round alike (see
fastdia.dia1.slots).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from ..errors import GenerationError
from ..backends.cpu.packed import rows_independent
from ..nn.cache import ROW_GRANULE, round_rows
from .generation import Dia2Generator, Dia2GenerationConfig, Prefix, _Run


@dataclass
class LiveText:
    """Text arriving for a running script from another thread: `push` pieces, then `end`."""

    pieces: list[str] = field(default_factory=list)
    ended: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def push(self, text: str) -> None:
        with self.lock:
            self.pieces.append(text)

    def end(self) -> None:
        with self.lock:
            self.ended = True

    def take(self) -> tuple[list[str], bool]:
        with self.lock:
            pieces, self.pieces = self.pieces, []
            return pieces, self.ended


@dataclass
class Dia2Member:
    run: _Run
    live: LiveText | None = None
    t: int = 0  # the next step's index (warm-up steps first, then loop steps from run.start)
    warming: bool = False
    finished: bool = False
    waiting: bool = False  # sat out the last step for want of text

    @property
    def steps_taken(self) -> int:
        return self.run.slot


class _CacheView:
    def __init__(self, cache, rows: int) -> None:
        self.k = [k[:rows] for k in cache.k]
        self.v = [v[:rows] for v in cache.v]
        self.slots = cache.slots


class Dia2SlotBatch:
    """Shared decoding state for up to `slots` concurrent Dia2 scripts.

    Args:
        generator: the model's Dia2Generator.
        slots: how many scripts decode together.
        max_steps: the most steps a member may take (prefix warm-up included); sizes the cache.
    """

    def __init__(self, generator: Dia2Generator, slots: int, max_steps: int) -> None:
        self.g = generator
        model, dev = generator.model, generator.device
        self.slots, self.max_steps = slots, max_steps
        self.granule = 2 if rows_independent(model) else ROW_GRANULE
        self.rows = round_rows(2 * slots, 2 * slots, self.granule)
        self.cache = model.new_decoder_cache(self.rows, max_steps, dev)
        self.dep_cache = model.new_depformer_cache(self.rows, dev)
        self.members: list[Dia2Member | None] = [None] * slots
        # One view per row count, kept: the CPU backend prepares its C calls once per cache object
        # (fastdia.backends.cpu.layer_plan), so a new view each step would re-prepare them each step.
        self._views: dict = {}

    @property
    def active(self) -> int:
        return sum(m is not None for m in self.members)

    def free(self) -> int:
        return self.slots - self.active

    def join(self, gen: Dia2GenerationConfig, prefix: Prefix | None, entries=None, live: LiveText | None = None,
             tokenizer=None) -> int:
        """Start a script in a free slot; `live` instead of `entries` for text that arrives later."""
        slot = self.members.index(None)
        run = self.g.start(gen, prefix, entries=entries, text=iter(()) if live is not None else None,
                           tokenizer=tokenizer if live is not None else None, own_caches=False)
        if run.total + run.p0 > self.max_steps:
            raise GenerationError(f"this request needs {run.total + run.p0} decoder steps (voice prefix and "
                                  f"max_steps); the server makes room for {self.max_steps}: use a shorter voice "
                                  "sample or a smaller max_steps")
        member = Dia2Member(run, live, t=0 if run.p0 else run.start, warming=run.p0 > 0)
        self.members[slot] = member
        self._check_done(member)
        return slot

    def leave(self, slot: int) -> None:
        self.members[slot] = None

    # ------------------------------------------------------------------ one step
    def _ready(self, m: Dia2Member) -> bool:
        if m.finished:
            return False
        if m.live is not None:
            pieces, ended = m.live.take()
            state = m.run.state
            for piece in pieces:
                state.append_text(piece)
            if ended:
                state.end_input()
            m.waiting = not m.warming and state.needs_text
            return not m.waiting
        return True

    def step(self) -> list[tuple[int, int]]:
        """One step for every member that can take one; returns (slot, loop step t) of the members
        that took a loop step (warm-up steps are not listed)."""
        g = self.g
        members = [(s, m) for s, m in enumerate(self.members) if m is not None]
        going = [(s, m) for s, m in members if self._ready(m)]
        moving = {s for s, _ in going}
        if not going:
            return []
        last = max(s for s, _ in members)
        rows = round_rows(2 * (last + 1), self.rows, self.granule)
        width = g.n_codebooks + 2
        tokens = torch.zeros((rows, 1, width), dtype=torch.long, device=g.device)
        pos = torch.zeros((rows, 1), dtype=torch.long, device=g.device)
        slots = torch.zeros((rows, 1), dtype=torch.long, device=g.device)
        for s, m in members:
            r = slice(2 * s, 2 * s + 2)
            if s in moving:
                tokens[r], pos[r], slots[r] = g.inputs(m.run, m.t)
            else:
                # Sitting out: write only where its next real step writes anyway.
                tokens[r], pos[r], slots[r] = m.run.tokens, max(m.t, 0), m.run.slot
        dec = g.transformer(tokens, pos, self._view("decoder", rows), slots=slots, kv_len=None)

        looping, stepped = [], []
        heads = {}
        for s, m in going:
            r = slice(2 * s, 2 * s + 2)
            if m.warming:
                g.warm(m.run, m.t)
                continue
            m.run.last = m.t
            heads[s] = g.head(m.run, m.t, dec.action_logits[r, 0], dec.cb0_logits[r, 0])
            if m.t < g.dep_from:  # its stages would be discarded (Dia2Generator.dep_from)
                g.skip_stages(m.run, m.t)
                continue
            looping.append((s, m))
        if looping:
            self._depformer(looping, heads, dec.hidden[:, 0], rows)
        for s, m in going:
            if m.warming:
                m.t += 1
                if m.t >= m.run.p0:
                    m.warming, m.t = False, m.run.start
            else:
                stepped.append((s, m.t))
                m.t += 1
            self._check_done(m)
        return stepped

    def _depformer(self, looping, heads, hidden: torch.Tensor, rows: int) -> None:
        g = self.g
        dep = g.model.depformer
        dev = g.device
        token = torch.zeros(rows, dtype=torch.long, device=dev)
        text = None
        if dep.text_embed is not None:
            text = (torch.zeros(rows, dtype=torch.long, device=dev), torch.zeros(rows, dtype=torch.long, device=dev))
        for s, _ in looping:
            r = slice(2 * s, 2 * s + 2)
            _, tok, txt = heads[s]
            token[r] = tok
            if text is not None:
                text[0][r], text[1][r] = txt
        view = self._view("depformer", rows)
        for stage in range(g.n_codebooks - 1):
            logits = g.stage(stage, hidden, token, view, text if stage == 0 else None)
            token = token.clone()
            for s, m in looping:
                r = slice(2 * s, 2 * s + 2)
                token[r] = g.pick(m.run, m.t, stage + 1, logits[r])
            if stage == 0 and g.rest_of_frame(hidden, token, view, [(2 * s, m.run, m.t) for s, m in looping]):
                return

    def _view(self, part: str, rows: int) -> _CacheView:
        key = (part, rows)
        if key not in self._views:
            self._views[key] = _CacheView(self.cache if part == "decoder" else self.dep_cache, rows)
        return self._views[key]

    def _check_done(self, m: Dia2Member) -> None:
        run = m.run
        if not m.warming and (m.t >= run.start + run.max_steps or self.g.done(run, m.t)):
            m.finished = True
