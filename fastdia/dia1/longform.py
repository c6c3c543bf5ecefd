"""Scripts of any length: chunk after chunk, each conditioned on voices and on what was just said.

A script longer than the chunk budget is split at speaker turns (`fastdia.text.split_script`).
Chunk k is generated as one ordinary Dia-1 generation whose audio prompt is a *context*: the
voice prompts the user gave (every chunk, not only the first), then the previous chunk, then, for
a speaker of this chunk who has no voice prompt and was silent in the previous chunk, the last
chunk in which they spoke. Each context piece is text with the exact codes of its audio, so the
transcript always matches the prompt, and the model continues both voices instead of inventing
new ones (or an intro jingle). Older pieces are dropped first when the model's window
(MAX_TEXT_TOKENS tokens, max_tokens frames) would not leave room for the new chunk.

The codes of all chunks are joined in order; decoded together (or streamed through one
`DACStream`) the joins are as smooth as any other frame boundary. Chunk 0 uses the call's seed as
it is and chunk k > 0 a seed derived from it, so a seed fixes the whole result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Generator, Iterator

import numpy as np
import torch

from ..errors import ScriptError
from ..text import MAX_TEXT_TOKENS, tokenize
from .generation import FRAME_RATE, SEED_MODULUS, Dia1Generator
from .options import GenerationConfig

# Dia's usual pace in script bytes per second of speech; sizes the room a chunk gets. A chunk may
# use up to CAP_FACTOR times its expected length (slow speech, long non-verbal sounds) and the
# context leaves it at least RESERVE_FACTOR times that, plus a second.
BYTES_PER_SECOND = 14.0
RESERVE_FACTOR = 1.25
CAP_FACTOR = 2.0


@dataclass(frozen=True, eq=False)  # identity: two chunks may say the same words
class Segment:
    """A transcript and the codes `(P, C)` of its audio: a voice prompt or a chunk already spoken."""

    text: str
    codes: torch.Tensor | None

    @property
    def frames(self) -> int:
        return 0 if self.codes is None else int(self.codes.shape[0])

    @property
    def speakers(self) -> frozenset[str]:
        return frozenset(tag for tag in ("[S1]", "[S2]") if tag in self.text)

    @property
    def tokens(self) -> int:
        return len(tokenize(self.text)) if self.text else 0


def chunk_seed(base: int, k: int) -> int:
    """The seed of chunk k: the call's seed for chunk 0, an independent stream for the others."""
    if k == 0:
        return base % SEED_MODULUS
    state = np.random.SeedSequence([base % SEED_MODULUS, k]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) % SEED_MODULUS


def expected_frames(text: str) -> int:
    """Frames Dia usually needs to speak `text` (at BYTES_PER_SECOND)."""
    return math.ceil(len(tokenize(text)) / BYTES_PER_SECOND * FRAME_RATE)


def select_context(chunk: str, voices: list[Segment], history: list[Segment], max_tokens: int,
                   max_delay: int) -> list[Segment]:
    """The prompt pieces for `chunk`: all `voices`, then as much useful history as fits.

    Raises:
        ScriptError when the voice transcripts leave no room for the chunk's text (a prompt too
        long for max_tokens is the generator's GenerationError).
    """
    text_room = MAX_TEXT_TOKENS - len(tokenize(chunk)) - sum(v.tokens + 1 for v in voices)
    if text_room < 0:
        raise ScriptError(
            f"the voice transcripts ({sum(v.tokens for v in voices)} tokens) and a chunk of the script "
            f"({len(tokenize(chunk))} tokens) exceed the {MAX_TEXT_TOKENS} tokens Dia reads; use shorter "
            "voice samples or a smaller chunk budget"
        )
    reserve = math.ceil(RESERVE_FACTOR * expected_frames(chunk)) + round(FRAME_RATE)
    frame_room = max_tokens - 1 - max_delay - sum(v.frames for v in voices) - reserve
    if not history:
        return list(voices)

    voiced = frozenset().union(*(v.speakers for v in voices)) if voices else frozenset()
    wanted = [history[-1]]
    covered = history[-1].speakers | voiced
    for tag in ("[S1]", "[S2]"):
        if tag in chunk and tag not in covered:
            older = next((h for h in reversed(history[:-1]) if tag in h.speakers), None)
            if older is not None and older not in wanted:
                wanted.append(older)
                covered |= older.speakers
    chosen: list[Segment] = []
    for seg in wanted:  # most important first: the previous chunk, then a silent speaker's
        if seg.frames <= frame_room and seg.tokens + 1 <= text_room:
            chosen.append(seg)
            frame_room -= seg.frames
            text_room -= seg.tokens + 1
    order = {id(h): i for i, h in enumerate(history)}
    return list(voices) + sorted(chosen, key=lambda h: order[id(h)])


def compose(context: list[Segment], chunk: str) -> tuple[list[int], torch.Tensor | None]:
    """One generation's input: the context transcripts then the chunk (tokens), and the
    context's codes joined (the audio prompt; None without one)."""
    codes = [s.codes for s in context if s.frames]
    texts = [s.text.strip() for s in context if s.text.strip()]
    text = " ".join(texts + [chunk.strip()]) if texts else chunk
    return tokenize(text), torch.cat(codes) if codes else None


def script_calls(
    chunks: list[str],
    voices: list[Segment],
    gen: GenerationConfig,
    max_delay: int,
    on_chunk: Callable[[int, int], None] | None = None,
) -> Generator[tuple[list[int], torch.Tensor | None, GenerationConfig], torch.Tensor | None, None]:
    """The generations that speak `chunks`, one after another, as a coroutine.

    Yields `(tokens, prompt, options)` for one Dia-1 generation; the caller runs it and sends
    back all the frames `(n, C)` it produced (None for none). Callers that run generations one at
    a time (`run_script`) and the server's batch scheduler, which interleaves many requests, drive
    the same plan, so a seed gives the same audio both ways.
    """
    history: list[Segment] = []
    for k, chunk in enumerate(chunks):
        if on_chunk is not None:
            on_chunk(k, len(chunks))
        context = select_context(chunk, voices, history, gen.max_tokens, max_delay)
        options = replace(gen, seed=chunk_seed(gen.seed, k))
        spoken = None
        for attempt in (context, list(voices)):
            tokens, prompt = compose(attempt, chunk)
            frames = 0 if prompt is None else prompt.shape[0]
            if len(chunks) > 1:
                # A chunk may run to CAP_FACTOR times its expected length, never to the whole
                # window: a chunk that does not stop would otherwise fill it with babble.
                cap = math.ceil(CAP_FACTOR * expected_frames(chunk)) + round(FRAME_RATE)
                options = replace(options, max_tokens=min(gen.max_tokens, 1 + frames + max_delay + cap))
            spoken = yield tokens, prompt, options
            if spoken is not None or len(attempt) == len(voices):
                break
            # The model ended at once: a previous chunk that itself closed on end-of-speech can
            # make that the likeliest next frame. Speak the chunk again from the voices alone
            # rather than lose its text.
        if spoken is not None:
            history.append(Segment(chunk, spoken))


def run_script(
    generator: Dia1Generator,
    chunks: list[str],
    voices: list[Segment],
    gen: GenerationConfig,
    on_step: Callable[[int], None] | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> Iterator[torch.Tensor]:
    """Generate `chunks` one after another, yielding new final frames `(n, C)` as they exist.

    Args:
        generator: the model's Dia1Generator.
        chunks: the script's chunks (`split_script`); one chunk is a plain generation.
        voices: voice prompts conditioning every chunk (may be empty).
        gen: options; `gen.seed` must be set (the caller draws one for None).
        on_step: called after every decoder step with the position.
        on_chunk: called with (k, number of chunks) before chunk k starts.
    """
    calls = script_calls(chunks, voices, gen, generator.cfg.max_delay, on_chunk)
    call = next(calls, None)
    while call is not None:
        tokens, prompt, options = call
        pieces = []
        for new in generator.run([tokens], [prompt], options, on_step=on_step):
            if new[0].shape[0]:
                pieces.append(new[0])
                yield new[0]
        try:
            call = calls.send(torch.cat(pieces) if pieces else None)
        except StopIteration:
            call = None
