"""Dia-1 generation: encode, prefill, decode loop with the EOS countdown, output extraction.

Semantics are those of the original implementation for the 0626 weights (spec 4.2-4.4), with the
prefill grid one row longer (1 + P + 15 rows, as transformers) so every channel starts with
delay[c] + 1 BOS tokens.

All per-item state lives in tensors with one entry per item (tokens, countdown, finished step,
prompt length) or per CFG row (KV cache slots, positions), so items finish independently and a
future scheduler can swap rows in and out between steps. The step itself has static shapes; the
loop checks for completion on the host only every `sync_every` steps (every step on CPU, where
a check costs nothing).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..backends.cpu import kernels as cpu_kernels
from ..backends.cpu.dia1_fused import decode_step
from ..backends.cpu.memory import release_free_heap
from .config import DiaConfig
from ..errors import GenerationError
from .model import CrossState, DiaModel
from ..nn.cache import KVCache
from ..nn.delay import UNKNOWN, prompt_grid, revert_delay
from .options import GenerationConfig
from ..nn.sampling import sample_rows

FRAME_RATE = 44100 / 512  # decoder steps per second of audio
# Seeds are int64 in the counter-based draws; any Python int is reduced into 0..2**63-1
# (documented), so seed=2**70 works and seeds that fit are used as they are.
SEED_MODULUS = 2**63
# Prompt positions one prefill pass covers (~0.37 s of audio): a longer voice prompt is prefilled
# in several passes, which a slot batch runs one per step, so a joining request does not stall the
# running ones for its whole prompt (benchmarks/prefill_stall.py: a 10 s prompt on the full-size
# int8 model stalled them 5.8 s in passes of 256). One-shot calls prefill in the same passes.
PREFILL_CHUNK = 32


@dataclass
class DecodeState:
    """Everything one batched generation carries between steps."""

    tokens: torch.Tensor  # (B, R, C) long, delayed grid; UNKNOWN where not yet generated
    prefill_steps: torch.Tensor  # (B,) long: 1 + prompt frames, rows known before generating
    countdown: torch.Tensor  # (B,) long: -1 running, 15..1 ending, 0 finished
    finished_step: torch.Tensor  # (B,) long: row of the EOS frame, -1 until known
    cache: KVCache
    cross: CrossState
    seeds: torch.Tensor  # (B,) int64: each item's seed for its counter-based draws (0 when greedy)
    settings: tuple[torch.Tensor, ...]  # (B,) each: cfg_scale, top_k, temperature, top_p (`row_settings`)
    width: int  # candidate columns `sample_rows` keeps (the largest top_k)
    t: int  # current decoder position (host int; all rows advance together in one generation)
    max_tokens: int
    prefilled: int = 0  # prompt positions whose K/V the cache holds (`prefill`); t when done


class Dia1Generator:
    """Runs generation for one loaded DiaModel on one device."""

    def __init__(self, model: DiaModel, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        self.cfg: DiaConfig = model.config
        # A CPU model with bfloat16 projection kernels around float32 norms and embeddings
        # (fastdia.backends.cpu.packed.weights_only_bf16) computes in float32, so the fused step
        # serves it; it says so itself.
        dtype = getattr(model, "compute_dtype", None) or dtype
        self.device, self.dtype = device, dtype
        self.delay = torch.tensor(self.cfg.delay_pattern, dtype=torch.long, device=device)
        # Single-position decoder calls go through the fastest step for this setup (a fused CPU
        # step where fastdia's kernels run; else the model's own forward), chosen once, here.
        self.decode = decode_step(model.decoder, device, dtype)
        # The candidate search of every draw (nn.sampling.top_ids): fastdia's C selection where the
        # kernels run, the same ids bit for bit (tests/test_rng.py), else torch's.
        kernels_here = device.type == "cpu" and cpu_kernels.available()
        self.top_ids = cpu_kernels.top_ids if kernels_here else None
        # ... and the rest of a draw, per row in C (greedy picks bit for bit torch's; a sampled
        # pick the same but where expf and torch's exp round a cut differently).
        self.sample_finish = cpu_kernels.sample_finish if kernels_here else None
        self.guide = cpu_kernels.dia1_guided if kernels_here else None  # the guided logits in one pass
        # Completion checks read a flag back to the host; on GPU do it every few steps only.
        self.sync_every = 1 if device.type == "cpu" else 8

    # ------------------------------------------------------------------ setup
    def check_room(self, prompt_frames: int, max_tokens: int, item: str = "") -> None:
        """Raise GenerationError unless `max_tokens` holds BOS, the prompt, the EOS countdown
        along the delay pattern and at least one new frame; the message says which is short."""
        cfg = self.cfg
        if max_tokens > cfg.decoder.max_positions:
            raise GenerationError(
                f"max_tokens={max_tokens} exceeds the model's {cfg.decoder.max_positions} positions"
            )
        need = 1 + prompt_frames + cfg.max_delay + 1
        if need <= max_tokens:
            return
        if prompt_frames == 0:
            raise GenerationError(
                f"max_tokens={max_tokens} is too small: a generation needs at least {need} positions (the "
                f"start frame, the {cfg.max_delay}-step delay of the codebooks and one frame of audio); "
                f"{FRAME_RATE:.0f} positions are about 1 s of audio"
            )
        raise GenerationError(
            f"the audio prompt{item} is {prompt_frames / FRAME_RATE:.1f} s ({prompt_frames} frames) and does not "
            f"fit with the script in max_tokens={max_tokens} ({max_tokens / FRAME_RATE:.1f} s in all, prompt "
            f"included); use a prompt of 5-10 s or raise max_tokens (at most {cfg.decoder.max_positions})"
        )

    def prepare(
        self,
        texts: list[list[int]],
        prompts: list[torch.Tensor | None],
        gen: GenerationConfig,
        cache_len: int | None = None,
        prefill: bool = True,
    ) -> DecodeState:
        """Encode the texts, build the prompt grid and prefill the KV cache.

        `cache_len` sizes the KV cache (default max_tokens); a scheduler that moves the prefilled
        rows into its own cache asks for only the prefill's length. `prefill=False` leaves the
        prefill to `prefill(state, frames)` calls (a scheduler spreads it over its steps).
        """
        cfg, dev = self.cfg, self.device
        b = len(texts)
        max_tokens = gen.max_tokens
        grid, steps = prompt_grid(prompts, self.delay, cfg.bos_id)
        for i, s in enumerate(steps):
            self.check_room(s - 1, max_tokens, "" if i == 0 else f" of item {i}")

        # Text: pad to the longest item only (spec 1.7: truncating is exact); rows interleave
        # (uncond_i, cond_i), the uncond row all zeros but masked like its cond partner.
        s_len = max(len(t) for t in texts)
        text = torch.zeros((b, s_len), dtype=torch.long, device=dev)
        for i, t in enumerate(texts):
            text[i, : len(t)] = torch.tensor(t, dtype=torch.long, device=dev)
        mask = (text != 0).repeat_interleave(2, dim=0)  # (2B, S)
        enc_in = torch.stack((torch.zeros_like(text), text), dim=1).view(2 * b, s_len)
        enc_out = self.model.encoder(enc_in, mask)
        trim = release_free_heap if dev.type == "cpu" else lambda: None
        trim()  # the encoder's freed temporaries (~30 MB at 1.6B size) before the cross K/V exist
        cross = self.model.decoder.cross_state(enc_out, mask, dtype=getattr(self.decode, "cross_dtype", None))
        del enc_out
        trim()

        tokens = torch.full((b, max_tokens + 1, cfg.n_channels), UNKNOWN, dtype=torch.long, device=dev)
        rows = min(grid.shape[1], max_tokens + 1)
        tokens[:, :rows] = grid[:, :rows]
        # A fixed-shape step (a static ONNX export) takes a cache of exactly its own length.
        fixed = getattr(self.decode, "cache_len", None)
        if fixed is not None and fixed < max_tokens:
            raise GenerationError(f"max_tokens={max_tokens} exceeds this static export's cache of {fixed} slots")
        cache_len = fixed or (max_tokens if cache_len is None else max(1, cache_len))
        cache = KVCache(cfg, 2 * b, cache_len, dev, self.dtype)

        base = 0  # greedy draws nothing
        if gen.temperature != 0:  # item i draws with seed + i (fastdia.nn.rng: counter-based)
            base = gen.seed if gen.seed is not None else secrets.randbits(62)
        seeds = torch.tensor([(base + i) % SEED_MODULUS for i in range(b)], dtype=torch.int64, device=dev)

        t = min(steps) - 1
        state = DecodeState(
            tokens=tokens,
            prefill_steps=torch.tensor(steps, dtype=torch.long, device=dev),
            countdown=torch.full((b,), -1, dtype=torch.long, device=dev),
            finished_step=torch.full((b,), -1, dtype=torch.long, device=dev),
            cache=cache,
            cross=cross,
            seeds=seeds,
            settings=row_settings(gen, b, dev, cfg.decoder.vocab_size),
            width=_width(gen, cfg),
            t=t,
            max_tokens=max_tokens,
        )
        if prefill:
            while not self.prefill(state):
                pass
        return state

    def prefill(self, state: DecodeState, frames: int | None = None) -> bool:
        """Prefill up to `frames` more of the rows every item knows (causal passes of at most
        PREFILL_CHUNK positions; logits are not needed); True once all t are in the cache. The
        chunks are the same whoever calls (a one-shot generation, a slot batch between its steps),
        so a prompt's K/V, and what follows from it, do not depend on the caller."""
        t, done = state.t, state.prefilled
        if done >= t:
            return True
        b2 = state.cache.k[0].shape[0]
        end = min(t, done + min(frames or PREFILL_CHUNK, PREFILL_CHUNK))
        known = state.tokens[:, done:end].repeat_interleave(2, dim=0)  # (2B, n, C)
        positions = torch.arange(done, end, device=self.device).expand(b2, end - done)
        self.model.decoder(known, positions, state.cache, state.cross, kv_len=end, compute_logits=False)
        state.prefilled = end
        return end >= t

    # ------------------------------------------------------------------ one step
    def step(self, state: DecodeState) -> None:
        """Decode position t for every row, sample, apply the EOS countdown, write row t + 1."""
        b = state.tokens.shape[0]
        t = state.t
        current = state.tokens[:, t].repeat_interleave(2, dim=0).unsqueeze(1)  # (2B, 1, C)
        positions = torch.full((2 * b, 1), t, dtype=torch.long, device=self.device)
        logits = self.decode(current, positions, state.cache, state.cross, kv_len=t + 1)
        self.advance(state, logits.view(b, 2, self.cfg.n_channels, -1))

    def advance(self, state: DecodeState, logits: torch.Tensor) -> None:
        """Sample row t + 1 from position t's logits `(B, 2, C, V)` (uncond, cond) with the
        settings `prepare` stored, apply the EOS countdown, write it: `sample_rows`, the very call a
        slot batch (fastdia.dia1.slots) makes for all its members at once."""
        t = state.t
        steps = torch.full((logits.shape[0],), t + 1, dtype=torch.long, device=logits.device)
        pred = sample_rows(logits, *state.settings, state.seeds, steps, self.cfg.eos_id, state.width,
                           select=self.top_ids,
                           finish=self.sample_finish, guide=self.guide)
        nxt = state.tokens[:, t + 1]  # (B, C)
        pred = self._eos_countdown(state, pred, t + 1, teacher_forced_ch0=nxt[:, 0] != UNKNOWN)
        # Teacher forcing: prompt and BOS cells already in the grid are kept.
        state.tokens[:, t + 1] = torch.where(nxt == UNKNOWN, pred, nxt)
        state.t = t + 1

    def _eos_countdown(
        self, state: DecodeState, pred: torch.Tensor, row: int, teacher_forced_ch0: torch.Tensor
    ) -> torch.Tensor:
        """Start the countdown on EOS (or at the length limit) and write EOS/PAD along the delays.

        If channel 0 emits EOS at row s, channel c gets EOS at row s + delay[c] and PAD after.
        """
        pred, state.countdown, state.finished_step = self.countdown_rows(
            state.countdown, state.finished_step, pred, row, state.max_tokens, teacher_forced_ch0)
        return pred

    def countdown_rows(self, countdown: torch.Tensor, finished_step: torch.Tensor, pred: torch.Tensor,
                       row: torch.Tensor | int, max_tokens: torch.Tensor | int, teacher_forced_ch0: torch.Tensor,
                       live: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The EOS countdown for rows (items or batch slots) each at its own `row` and limit: returns
        (pred with EOS/PAD written along the delays, countdown, finished_step), new tensors. `live`
        (B,) bool: rows that advance this step (the others keep their state)."""
        cfg = self.cfg
        max_delay = cfg.max_delay
        # A sampled EOS counts only where channel 0 is not being teacher-forced from a prompt
        # (the original also counted EOS sampled inside another, longer prompt: spec 8.15).
        hit_eos = (pred[:, 0] == cfg.eos_id) & ~teacher_forced_ch0
        at_limit = torch.as_tensor(row) >= torch.as_tensor(max_tokens) - max_delay
        start = (countdown < 0) & (hit_eos | at_limit)
        if live is not None:
            start &= live
        countdown = torch.where(start, max_delay, countdown)
        finished_step = torch.where(start, torch.as_tensor(row, device=countdown.device), finished_step)
        ending = countdown > 0
        if live is not None:
            ending &= live
        k = (max_delay - countdown).unsqueeze(1)  # steps since EOS on channel 0
        delay = self.delay.unsqueeze(0)
        pred = torch.where(ending.unsqueeze(1) & (k == delay), cfg.eos_id, pred)
        pred = torch.where(ending.unsqueeze(1) & (k > delay), cfg.pad_id, pred)
        return pred, countdown - ending.long(), finished_step

    # ------------------------------------------------------------------ loop and output
    def steps(self, state: DecodeState) -> Iterator[int]:
        """Advance until every item has finished (or max_tokens); yields the new position each step."""
        n = 0
        while state.t < state.max_tokens:
            self.step(state)
            n += 1
            yield state.t
            if n % self.sync_every == 0 and bool((state.countdown == 0).all()):
                return

    def final_lengths(self, state: DecodeState) -> list[int]:
        """Per item, how many new frames are final now (one host read).

        Frame j of an item (grid row start + j on channel 0) is final once row start + j +
        max_delay is written, i.e. for j <= t - max_delay; an item that emitted EOS at row s
        has s - start frames in all.
        """
        return self.final_counts(state.t, state.finished_step, state.prefill_steps).tolist()

    def final_counts(self, t, finished_step: torch.Tensor, prefill_steps: torch.Tensor) -> torch.Tensor:
        """`final_lengths` as a tensor, for rows at positions `t` (an int or a tensor)."""
        ready = t + 1 - self.cfg.max_delay
        limit = torch.where(finished_step < 0, ready, finished_step.clamp(max=ready))
        return (limit - prefill_steps).clamp(min=0)

    def frames(self, state: DecodeState, item: int, a: int, b: int) -> torch.Tensor:
        """Reverted codes `(b - a, C)` of frames a..b-1 of `item` (final ones), clamped to 0..1023."""
        start = int(state.prefill_steps[item])
        window = state.tokens[item: item + 1, start + a: start + b + self.cfg.max_delay]  # (1, n + 15, C)
        codes = revert_delay(window, self.delay)[0, : b - a]
        return torch.where((codes < 0) | (codes > 1023), 0, codes)

    def extract(self, state: DecodeState) -> list[torch.Tensor]:
        """Reverted codes `(T_i, C)` per item, prompt and EOS excluded, values clamped to 0..1023."""
        return [self.frames(state, i, 0, n) for i, n in enumerate(self.final_lengths(state))]

    def run(
        self,
        texts: list[list[int]],
        prompts: list[torch.Tensor | None],
        gen: GenerationConfig,
        on_step: Callable[[int], None] | None = None,
    ) -> Iterator[list[torch.Tensor]]:
        """Generate, yielding each item's newly final frames `(n_i, C)` as soon as they exist.

        Frames are read back every `sync_every` steps (a host sync) and once at the end; the
        pieces of an item joined give exactly what `generate` returns for it.
        """
        state = self.prepare(texts, prompts, gen)
        done = [0] * len(texts)
        for n, t in enumerate(self.steps(state), start=1):
            if on_step is not None:
                on_step(t)
            if n % self.sync_every == 0:
                yield self._new_frames(state, done)
        yield self._new_frames(state, done)

    def _new_frames(self, state: DecodeState, done: list[int]) -> list[torch.Tensor]:
        pieces = []
        for i, n in enumerate(self.final_lengths(state)):
            pieces.append(self.frames(state, i, done[i], n))
            done[i] = max(done[i], n)
        return pieces

    def generate(
        self,
        texts: list[list[int]],
        prompts: list[torch.Tensor | None],
        gen: GenerationConfig,
        on_step: Callable[[int], None] | None = None,
    ) -> list[torch.Tensor]:
        state = self.prepare(texts, prompts, gen)
        for t in self.steps(state):
            if on_step is not None:
                on_step(t)
        return self.extract(state)


def row_settings(gen: GenerationConfig, rows: int, device: torch.device, vocab: int) -> tuple[torch.Tensor, ...]:
    """(cfg_scale, top_k, temperature, top_p): `(rows,)` tensors of `gen`'s settings, for `sample_rows`."""
    f32 = dict(dtype=torch.float32, device=device)
    return (torch.full((rows,), gen.cfg_scale, **f32),
            torch.full((rows,), gen.cfg_filter_top_k or vocab, dtype=torch.long, device=device),
            torch.full((rows,), gen.temperature, **f32), torch.full((rows,), gen.top_p, **f32))


def _width(gen: GenerationConfig, cfg: DiaConfig) -> int:
    return min(gen.cfg_filter_top_k or cfg.decoder.vocab_size, cfg.decoder.vocab_size)
