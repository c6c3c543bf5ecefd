"""Dia2 continuous batching: many scripts share each decoder pass and each depformer stage.

A `Dia2SlotBatch` owns one decoder cache and one depformer cache with two rows (the CFG pair) per
slot, and one `Dia2Group`: the per-slot tensors (delayed buffers, next text, step, cache slot,
seed, sampling settings). A script joins between steps: `Dia2Generator.start` builds its run in
its slot (text state, buffer, its own seed for its counter-based draws). Each step is
`Dia2Generator.step_group`, the very code a one-shot generation runs as a group of one: the
inputs of every member gathered at its own step and cache slot, one decoder call, the action and
codebook-0 picks of all members in one call each, each member's text state machine (the one piece
of host Python per member), and one call per depformer stage with one pick call (or one C call
for a frame's stages). A finished member leaves at once.

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

from ..errors import GenerationError
from ..backends.cpu.packed import rows_independent
from ..nn.cache import ROW_GRANULE, round_rows
from .generation import Dia2Generator, Dia2Group, Prefix, _Run
from .options import Dia2GenerationConfig


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
    finished: bool = False
    waiting: bool = False  # sat out the last step for want of text

    @property
    def t(self) -> int:
        return self.run.t

    @property
    def warming(self) -> bool:
        return self.run.warming


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
        # Per-slot tensors (buffers, next text, step, cache slot, seed, settings), for all slots.
        self.group = Dia2Group(self.rows // 2, max_steps + 1, generator.n_codebooks, dev)
        self.members: list[Dia2Member | None] = [None] * slots
        # One view per row count, kept: the CPU backend prepares its C calls once per cache object
        # (fastdia.backends.cpu.layer_plan), so a new view each step would re-prepare them each step.
        self._views: dict = {}
        # Set when a member finishes, cleared by `take_ended`: the runner asks once a step instead
        # of looking at every member.
        self.ended = False

    @property
    def active(self) -> int:
        return sum(m is not None for m in self.members)

    def free(self) -> int:
        return self.slots - self.active

    def join(self, gen: Dia2GenerationConfig, prefix: Prefix | None, entries=None, live: LiveText | None = None,
             tokenizer=None) -> int:
        """Start a script in a free slot; `live` instead of `entries` for text that arrives later."""
        slot = self.members.index(None)
        steps = (gen.max_steps or self.g.cfg.runtime.max_context_steps) + (
            0 if prefix is None else 2 * prefix.plan.frames_total + self.g.max_delay)
        if steps + 1 > self.max_steps:
            raise GenerationError(f"this request needs {steps + 1} decoder steps (voice prefix and max_steps); the "
                                  f"server makes room for {self.max_steps}: use a shorter voice sample or a smaller "
                                  "max_steps")
        run = self.g.start(gen, prefix, entries=entries, text=iter(()) if live is not None else None,
                           tokenizer=tokenizer if live is not None else None, group=self.group, slot=slot)
        member = Dia2Member(run, live)
        self.members[slot] = member
        self._widths()
        self._check_done(member)
        return slot

    def leave(self, slot: int) -> None:
        self.members[slot] = None
        # A free slot's rows still run (harmlessly) in the steps: at step 0, cache slot 0.
        self.group.t[slot] = 0
        self.group.cache_slot[slot] = 0
        self._widths()

    def _widths(self) -> None:
        runs = [m.run.gen for m in self.members if m is not None]
        self.group.widths = [max((g.cfg_filter_k for g in runs), default=1), max((g.top_k for g in runs), default=1)]

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
        members = [(s, m) for s, m in enumerate(self.members) if m is not None]
        going = [(s, m) for s, m in members if self._ready(m)]
        if not going:
            return []
        last = members[-1][0]
        rows = round_rows(2 * (last + 1), self.rows, self.granule)
        looped = [(s, m.t) for s, m in going if not m.warming]
        kv_len = None if self.g.device.type != "cpu" else max(m.run.slot for _, m in members) + 1
        self.g.step_group(self.group, rows, self._view("decoder", rows), self._view("depformer", rows),
                          [(s, m.run) for s, m in going], kv_len=kv_len)
        for _, m in going:
            self._check_done(m)
        return looped

    def _view(self, part: str, rows: int) -> _CacheView:
        key = (part, rows)
        if key not in self._views:
            self._views[key] = _CacheView(self.cache if part == "decoder" else self.dep_cache, rows)
        return self._views[key]

    def _check_done(self, m: Dia2Member) -> None:
        if self.g.finished(m.run):
            m.finished = True
            self.ended = True

    def take_ended(self) -> bool:
        """Whether a member finished since the last call."""
        ended, self.ended = self.ended, False
        return ended
