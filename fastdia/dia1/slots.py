"""Dia-1 continuous batching: many requests decode in one step, joining and leaving between steps.

A `SlotBatch` owns one self-attention KV cache and one cross-attention store with rows for
`slots` requests (two CFG rows each). A request is prefilled on its own (`Dia1Generator.prepare`
with a cache just long enough for its prompt), its rows are copied into a free slot, and from
then on every step decodes all occupied slots at once. Each request keeps its own position (rows
attend to their own positions only), samples from its own slice of the step's logits with its own
seed (`Dia1Generator.advance`, the same code a one-shot generation runs; counter-based draws) and leaves the
moment it is done, freeing its slot for the next request.

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
from .generation import DecodeState, Dia1Generator
from .options import GenerationConfig


@dataclass
class SlotMember:
    """One request's generation inside the batch."""

    state: DecodeState
    gen: GenerationConfig
    given: int = 0  # frames already handed out by `new_frames`

    @property
    def finished(self) -> bool:
        s = self.state
        return s.t >= s.max_tokens or bool(s.countdown[0] == 0)


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
        """Prefill one generation on its own and place it into a free slot; returns the slot."""
        if gen.max_tokens > self.max_len:
            raise ValueError(f"max_tokens={gen.max_tokens} exceeds this batch's {self.max_len}")
        slot = self.members.index(None)  # the caller checks free() first
        frames = 0 if prompt is None else int(prompt.shape[0])
        state = self.g.prepare([tokens], [prompt], gen, cache_len=frames + 1)
        t, rows = state.t, slice(2 * slot, 2 * slot + 2)
        for own, shared in ((state.cache.k, self.cache.k), (state.cache.v, self.cache.v)):
            for i in range(len(shared)):
                shared[i][rows, :, :t] = own[i][:, :, :t]
        self._place_cross(rows, state.cross)
        state.cache = state.cross = None  # the rows live in the shared stores now
        self.members[slot] = SlotMember(state, gen)
        return slot

    def leave(self, slot: int) -> None:
        """Free a slot (finished, cancelled or timed out); its stale rows are masked by position."""
        self.members[slot] = None

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
        """Decode one position for every member at once; each samples its next row."""
        occupied = [s for s, m in enumerate(self.members) if m is not None]
        if not occupied:
            return
        g, cfg = self.g, self.g.cfg
        rows = round_rows(2 * (occupied[-1] + 1), self.rows, self.granule)
        current = torch.zeros((rows, 1, cfg.n_channels), dtype=torch.long, device=g.device)
        positions = torch.zeros((rows, 1), dtype=torch.long, device=g.device)
        for s in occupied:
            st = self.members[s].state
            current[2 * s: 2 * s + 2, 0] = st.tokens[0, st.t]
            positions[2 * s: 2 * s + 2] = st.t
        cache, cross = self._views_of(rows)
        logits = g.decode(current, positions, cache, cross, kv_len=None)
        logits = logits.view(rows // 2, 2, cfg.n_channels, -1)
        for s in occupied:
            m = self.members[s]
            g.advance(m.state, logits[s: s + 1], m.gen)

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

    def new_frames(self, slot: int) -> torch.Tensor:
        """The member's frames `(n, C)` that became final since the last call."""
        m = self.members[slot]
        n = self.g.final_lengths(m.state)[0]
        out = self.g.frames(m.state, 0, m.given, n)
        m.given = max(m.given, n)
        return out
