"""Dia-1 continuous batching: many requests decode in one step, joining and leaving between steps.

A `SlotBatch` owns one self-attention KV cache and one cross-attention store with rows for
`slots` requests (two CFG rows each). A request is prefilled on its own (`Dia1Generator.prepare`
with a cache just long enough for its prompt), its rows are copied into a free slot, and from
then on every step decodes all occupied slots at once. Per-slot state lives in tensors indexed
by slot (the delayed token grid, position, limit, EOS countdown, seed and sampling settings), so
a step is one gather, one model call, one `sample_rows` call for every member (each with its own
settings and counter-based draws: the call a one-shot generation's `Dia1Generator.advance` makes)
and the countdown and writes as tensor ops, whatever the number of members. A request keeps its
own position (rows attend to their own positions only) and leaves the moment it is done, freeing
its slot for the next request.

Results do not depend on the company a request keeps. Sampling and attention are per row. The
matrix products are the one place where other rows could matter. fastdia's CPU kernels compute
each row on its own, so with them a step covers exactly the occupied slots. A BLAS (the dense
fallbacks) picks its kernel, and so its rounding, from the number of rows: on x86 fp32 products
of 1-7 and of 9-11 rows round differently from those of 8, 12, 16, ... rows; then a step covers a
multiple of `ROW_GRANULE` rows (free slots fill the rest with harmless dummy rows). Either way a
request's audio is identical alone or with 15 others (tests/test_server_batching.py checks this
end to end).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends.cpu.packed import rows_independent
from .model import CrossState
from ..nn.cache import ROW_GRANULE, KVCache, round_rows
from ..nn.sampling import sample_rows
from .generation import UNKNOWN, DecodeState, Dia1Generator
from .options import GenerationConfig


@dataclass
class SlotMember:
    """One request's generation inside the batch. Its state's tensors are views of the batch's
    per-slot rows; `t` lives in the batch's step counters (`state.t` is brought up to date when
    frames are read)."""

    state: DecodeState
    gen: GenerationConfig
    t: torch.Tensor  # (1,) view of the batch's counter for this slot
    given: int = 0  # frames already handed out by `new_frames`

    @property
    def finished(self) -> bool:
        s = self.state
        return int(self.t[0]) >= s.max_tokens or bool(s.countdown[0] == 0)


class _CacheView:
    """The first `rows` rows of the shared cache, in the shape the decoder expects."""

    def __init__(self, cache: KVCache, rows: int) -> None:
        self.k = [k[:rows] for k in cache.k]
        self.v = [v[:rows] for v in cache.v]


class SlotBatch:
    """Shared decoding state for up to `slots` concurrent Dia-1 generations.

    Args:
        generator: the model's Dia1Generator (its decode step and sampling are reused).
        slots: how many requests can decode together.
        max_len: the longest generation (max_tokens) a request may ask for.
    """

    def __init__(self, generator: Dia1Generator, slots: int, max_len: int) -> None:
        cfg = generator.cfg
        self.g = generator
        self.slots, self.max_len = slots, min(max_len, cfg.decoder.max_positions)
        # Rows in the stores: with a BLAS, every step's row count is one fixed number (up to 8
        # rows) or a multiple of ROW_GRANULE, never a count whose products round differently.
        self.granule = 2 if rows_independent(generator.model.decoder) else ROW_GRANULE
        self.rows = round_rows(2 * slots, 2 * slots, self.granule)
        self.cache = KVCache(cfg, self.rows, self.max_len, generator.device, generator.dtype)
        self.cross: CrossState | None = None  # allocated at the first join, widened for longer texts
        self.members: list[SlotMember | None] = [None] * slots
        self.prefilling: list[int] = []  # joined slots whose prompt prefill is not complete, in order
        # Per-slot state as tensors, so one step samples, counts down and writes every member at
        # once: the delayed token grid, position, limits, EOS countdown, seed and settings.
        dev, n_ch = generator.device, cfg.n_channels
        self.tokens = torch.full((slots, self.max_len + 1, n_ch), UNKNOWN, dtype=torch.long, device=dev)
        self.t = torch.zeros(slots, dtype=torch.long, device=dev)
        self.prefill = torch.zeros(slots, dtype=torch.long, device=dev)
        self.max_tokens = torch.zeros(slots, dtype=torch.long, device=dev)
        self.countdown = torch.zeros(slots, dtype=torch.long, device=dev)  # 0: free or finished
        self.finished_step = torch.full((slots,), -1, dtype=torch.long, device=dev)
        self.seeds = torch.zeros(slots, dtype=torch.long, device=dev)
        self.in_use = torch.zeros(slots, dtype=torch.bool, device=dev)
        self.width = 1  # candidate columns of the sampling call: the members' largest top_k
        vocab = cfg.decoder.vocab_size
        self.settings = (torch.ones(slots, device=dev), torch.full((slots,), vocab, dtype=torch.long, device=dev),
                         torch.zeros(slots, device=dev), torch.ones(slots, device=dev))  # cfg, top_k, T, top_p
        # Views of the stores per row count, kept while the stores are: the CPU backend prepares
        # its C calls once per cache and cross object (fastdia.backends.cpu.dia1_fused), so new views
        # each step would re-prepare them each step.
        self._views: dict = {}

    # ------------------------------------------------------------------ membership
    @property
    def active(self) -> int:
        return sum(m is not None for m in self.members)

    def free(self) -> int:
        return self.slots - self.active

    def join(self, tokens: list[int], prompt: torch.Tensor | None, gen: GenerationConfig) -> int:
        """Encode one generation's text and place it into a free slot; returns the slot. Its
        prompt is prefilled on its own, one chunk now and one chunk before each later step
        (`Dia1Generator.prefill`), so a long voice prompt does not stall the running members for
        its whole length; the member decodes from the step after its prefill is complete."""
        if gen.max_tokens > self.max_len:
            raise ValueError(f"max_tokens={gen.max_tokens} exceeds this batch's {self.max_len}")
        slot = self.members.index(None)  # the caller checks free() first
        frames = 0 if prompt is None else int(prompt.shape[0])
        state = self.g.prepare([tokens], [prompt], gen, cache_len=frames + 1, prefill=False)
        self.members[slot] = SlotMember(state, gen, self.t[slot: slot + 1])
        self.width = max(m.state.width for m in self.members if m is not None)
        # Held out of the steps until placed: not in use, not finished, nothing final yet.
        self.in_use[slot] = False
        self.t[slot], self.countdown[slot], self.finished_step[slot] = 0, -1, -1
        self.max_tokens[slot], self.prefill[slot] = gen.max_tokens, state.prefill_steps[0]
        self.tokens[slot] = UNKNOWN  # its rows run (harmlessly) in the steps meanwhile: real ids at t = 0
        self.tokens[slot, :state.tokens.shape[1]] = state.tokens[0]
        if self.g.prefill(state):
            self._place(slot)
        else:
            self.prefilling.append(slot)
        return slot

    def _place(self, slot: int) -> None:
        """A member whose prefill is complete: its rows move into the shared stores and its
        per-slot state into the batch's tensors; it decodes from the next step."""
        member = self.members[slot]
        state = member.state
        t, rows = state.t, slice(2 * slot, 2 * slot + 2)
        for own, shared in ((state.cache.k, self.cache.k), (state.cache.v, self.cache.v)):
            for i in range(len(shared)):
                shared[i][rows, :, :t] = own[i][:, :, :t]
        self._place_cross(rows, state.cross)
        state.cache = state.cross = None  # the rows live in the shared stores now
        # The request's rows of the per-slot state; its DecodeState keeps views of them.
        # (tokens, max_tokens and prefill were written at join; steps leave an unplaced row alone)
        length = state.tokens.shape[1]
        self.t[slot], self.countdown[slot] = t, state.countdown[0]
        self.finished_step[slot] = state.finished_step[0]
        self.seeds[slot] = state.seeds[0]
        self.in_use[slot] = True
        for mine, value in zip(self.settings, state.settings):
            mine[slot] = value[0]
        state.tokens = self.tokens[slot: slot + 1, :length]
        state.prefill_steps = self.prefill[slot: slot + 1]
        state.countdown = self.countdown[slot: slot + 1]
        state.finished_step = self.finished_step[slot: slot + 1]

    def leave(self, slot: int) -> None:
        """Free a slot (finished, cancelled or timed out); its stale rows are masked by position."""
        self.members[slot] = None
        if slot in self.prefilling:
            self.prefilling.remove(slot)
        self.in_use[slot] = False
        self.t[slot] = 0  # a free row decodes position 0 (it is overwritten at the next join)
        self.countdown[slot] = 0
        self.width = max((m.state.width for m in self.members if m is not None), default=1)

    def _place_cross(self, rows: slice, own: CrossState) -> None:
        s_len = own.allowed.shape[-1]
        if self.cross is None or self.cross.allowed.shape[-1] < s_len:
            self._widen(max(s_len, 2 * (0 if self.cross is None else self.cross.allowed.shape[-1])), own)
        cross = self.cross
        for i in range(len(cross.k)):
            cross.k[i][rows, :, :s_len] = own.k[i]
            cross.v[i][rows, :, :s_len] = own.v[i]
        cross.allowed[rows] = False
        cross.allowed[rows, ..., :s_len] = own.allowed

    def _widen(self, s_cap: int, like: CrossState) -> None:
        """(Re)allocate the cross store for texts up to `s_cap` tokens, keeping what it holds."""
        n = self.rows
        old = self.cross
        k_shape = (n, like.k[0].shape[1], s_cap, like.k[0].shape[3])
        dev, dt = like.k[0].device, like.k[0].dtype
        ks = [torch.zeros(k_shape, dtype=dt, device=dev) for _ in like.k]
        vs = [torch.zeros(k_shape, dtype=dt, device=dev) for _ in like.v]
        allowed = torch.zeros((n, 1, 1, s_cap), dtype=torch.bool, device=dev)
        if old is not None:
            w = old.allowed.shape[-1]
            for new, prev in zip(ks + vs, old.k + old.v):
                new[:, :, :w] = prev
            allowed[..., :w] = old.allowed
        # A free row attends to its first text position: softmax over nothing would be NaN, and
        # NaN rows, harmless as they are, make debugging harder.
        allowed[..., 0] |= ~allowed.any(dim=-1)
        self.cross = CrossState(ks, vs, allowed)

    # ------------------------------------------------------------------ one step
    def step(self) -> None:
        """Decode one position for every member at once: one model call, one sampling call for all
        rows (each with its own settings, seed and step), the EOS countdown and the writes as
        tensor ops. No Python runs per member."""
        if self.prefilling and self.g.prefill(self.members[self.prefilling[0]].state):
            self._place(self.prefilling.pop(0))  # one prefill chunk per step, first joined first
        occupied = [s for s, m in enumerate(self.members) if m is not None]
        if len(occupied) == len(self.prefilling):  # nobody decodes yet (each still prefilling)
            return
        g, cfg = self.g, self.g.cfg
        rows = round_rows(2 * (occupied[-1] + 1), self.rows, self.granule)
        n, n_ch = rows // 2, cfg.n_channels
        t = self.t[:n]
        at = t.view(n, 1, 1).expand(n, 1, n_ch)
        current = self.tokens[:n].gather(1, at).repeat_interleave(2, dim=0)  # (rows, 1, C)
        positions = t.repeat_interleave(2).view(rows, 1)
        cache, cross = self._views_of(rows)
        logits = g.decode(current, positions, cache, cross, kv_len=None).view(n, 2, n_ch, -1)
        pred = sample_rows(logits, *(x[:n] for x in self.settings), self.seeds[:n], t + 1, cfg.eos_id, self.width,
                           select=g.top_ids, finish=g.sample_finish, guide=g.guide)
        live = self.in_use[:n] & (t < self.max_tokens[:n])
        row = (t + 1).clamp(max=self.max_len)  # a row at its limit does not advance (`live`)
        nxt = self.tokens[:n].gather(1, row.view(n, 1, 1).expand(n, 1, n_ch)).squeeze(1)  # (n, C)
        pred, countdown, finished = g.countdown_rows(self.countdown[:n], self.finished_step[:n], pred, row,
                                                     self.max_tokens[:n], nxt[:, 0] != UNKNOWN, live)
        self.countdown[:n], self.finished_step[:n] = countdown, finished
        # Teacher forcing: prompt and BOS cells already in the grid are kept.
        written = torch.where(live.view(n, 1) & (nxt == UNKNOWN), pred, nxt)
        self.tokens[:n].scatter_(1, row.view(n, 1, 1).expand(n, 1, n_ch), written.unsqueeze(1))
        self.t[:n] += live.long()

    def _views_of(self, rows: int) -> tuple[_CacheView, CrossState]:
        """The first `rows` rows of the KV cache and of the cross store (rebuilt after a widening)."""
        held = self._views.get(rows)
        if held is not None and held[2] is not self.cross:
            self._views.clear()  # a widened store: views of the old one would keep it alive
            held = None
        if held is None:
            c = self.cross
            held = self._views[rows] = (_CacheView(self.cache, rows),
                                        CrossState([k[:rows] for k in c.k], [v[:rows] for v in c.v], c.allowed[:rows]),
                                        c)
        return held[0], held[1]

    def poll(self) -> tuple[list[int], list[int], list[bool]]:
        """Every slot's position, count of final frames and whether it has finished, in one host
        read (the only sync of a step loop; a runner makes it every few steps)."""
        final = self.g.final_counts(self.t, self.finished_step, self.prefill)
        done = (self.t >= self.max_tokens) | (self.countdown == 0)
        t, final, done = torch.stack((self.t, final, done.long())).tolist()
        return t, final, [bool(d) for d in done]

    def new_frames(self, slot: int, final: int) -> torch.Tensor:
        """The member's frames `(n, C)` that became final since the last call; `final`: its count
        of final frames from `poll`."""
        m = self.members[slot]
        out = self.g.frames(m.state, 0, m.given, final)
        m.given = max(m.given, final)
        return out

    def codes(self, slot: int) -> torch.Tensor:
        """The member's reverted codes `(T, C)` so far (all of them once it has finished)."""
        m = self.members[slot]
        m.state.t = int(m.t[0])
        return self.g.extract(m.state)[0]
