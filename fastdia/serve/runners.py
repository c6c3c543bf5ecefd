"""The per-family halves of an engine: turn a request into a job, and step all jobs as one batch.

A runner lives on the engine's scheduler thread (only `plan` runs on the caller's thread: it
validates and plans without touching shared state). Each job knows its ticket; after a step the
runner hands every job's new audio to its ticket and reports the jobs that ended.

Dia-1 jobs speak scripts of any length: the long-script plan (`longform.script_calls`) yields one
generation per chunk; when a chunk ends its job re-joins the batch at once with the next one, and
all chunks' frames flow through one DAC stream, so the audio is what `Dia.stream` gives.
Dia2 jobs run one generation, prefix warm-up included, with text given whole or arriving live.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..audio import ramp_chunk
from ..codecs.dac.codec import decode_windows
from ..errors import GenerationError
from ..dia1.generation import FRAME_RATE as DIA1_FRAME_RATE
from ..dia1.slots import SlotBatch
from ..dia2.slots import Dia2SlotBatch, LiveText
from ..dia1.longform import script_calls
from ..text import DEFAULT_CHUNK_TOKENS

DIA2_FRAME_RATE = 12.5
POLL_EVERY = 4  # steps between the host's reads of a batch's progress (CPU; twice that on a GPU)
PREFIX_FRAMES = 375  # the longest voice prefix a Dia2 engine makes room for (30 s)


@dataclass
class Job:
    """One request inside a runner."""

    ticket: Any
    frames: int = 0  # codec frames generated so far (the usage's output tokens)
    steps: int = 0  # decoder steps taken (a load benchmark's throughput unit)
    slot: int | None = None
    state: dict = field(default_factory=dict)  # the family's own fields


def _quiet(fn, *args, **kwargs):
    # A random-weight preset warns on every call; a server says it once, at load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


class _SlotRunner:
    """What both families' runners share: the jobs by slot, and leaving the batch."""

    batch = None  # the family's slot batch (SlotBatch or Dia2SlotBatch)

    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}
        self.failed: list[tuple[Job, BaseException]] = []  # members that failed alone; the engine ends them

    def take_failed(self) -> list[tuple[Job, BaseException]]:
        """The jobs that failed on their own since the last call (already out of the batch)."""
        failed, self.failed = self.failed, []
        return failed

    def fail(self, job: Job, exc: BaseException) -> None:
        """One member's own failure: it leaves the batch and the others step on untouched."""
        self.drop(job)
        self.failed.append((job, exc))

    @property
    def active(self) -> int:
        return len(self.jobs)

    def free(self) -> int:
        return self.batch.free()

    def drop(self, job: Job) -> None:
        """Take a job out of the batch (finished, cancelled or timed out); its slot is free at once."""
        if job.slot is not None and self.jobs.get(job.slot) is job:
            self.batch.leave(job.slot)
            del self.jobs[job.slot]
        job.slot = None


class Dia1Runner(_SlotRunner):
    """Dia-1 requests in a `SlotBatch`, their audio through one `DACStream` each."""

    family = "dia1"

    def __init__(self, tts, slots: int, codec_batch: int = 1) -> None:
        self.tts = tts
        self.batch = SlotBatch(tts._generator, slots, tts.config.decoder.max_positions)
        self.codec_batch = codec_batch
        # The host reads positions and finished rows every few steps, not every step: between
        # reads a step is the batch's tensor work alone (a member that ended waits at most this
        # many steps for its slot to be freed).
        self.poll_every = POLL_EVERY if tts.device.type == "cpu" else 2 * POLL_EVERY
        self._since = 0
        super().__init__()

    def plan(self, text: str, voice: str | None, seed_default: int | None, options: dict, chunk_seconds: float,
             ticket, max_chunk_seconds: float | None = None) -> Job:
        opts = dict(options)
        if seed_default is not None:
            opts.setdefault("seed", seed_default)
        gen, jobs, _ = _quiet(self.tts._plan, text, None, None, None, voice, DEFAULT_CHUNK_TOKENS, opts)
        chunks, voices = jobs[0]
        calls = script_calls(chunks, voices, gen, self.tts.config.max_delay)
        frames = max(1, round(chunk_seconds * DIA1_FRAME_RATE))
        largest = max(frames, round((max_chunk_seconds or 0) * DIA1_FRAME_RATE))
        return Job(ticket, state={"calls": calls, "call": next(calls), "pieces": [],
                                  "stream": self.tts.codec.stream(frames, largest)})

    def join(self, job: Job) -> None:
        tokens, prompt, options = job.state["call"]
        job.slot = self.batch.join(tokens, prompt, options)
        job.state["pieces"] = []
        job.state["t0"] = int(self.batch.members[job.slot].state.t)  # its position after the prefill
        job.state.setdefault("steps_before", 0)
        self.jobs[job.slot] = job

    def step(self) -> list[tuple[Job, list[tuple[np.ndarray, tuple]], bool]]:
        """One batched step; every `poll_every` steps, (job, new (audio, words) pieces, finished)
        for the jobs with news (the other steps return nothing: no per-job work between polls)."""
        self.batch.step()
        self._since += 1
        if self._since < self.poll_every:
            return []
        self._since = 0
        positions, final, done = self.batch.poll()  # the one host read
        planned = []  # (job, its stream windows, finished): decoded together below
        for slot, job in list(self.jobs.items()):
            st = job.state
            job.steps = st["steps_before"] + positions[slot] - st["t0"]
            windows = []
            if final[slot] > self.batch.members[slot].given:
                frames = self.batch.new_frames(slot, final[slot])
                st["pieces"].append(frames)
                job.frames += frames.shape[0]
                windows += st["stream"].plan_push(frames.cpu().numpy())
            finished = False
            if done[slot]:
                self.drop(job)
                st["steps_before"] = job.steps
                pieces = st["pieces"]
                try:
                    st["call"] = st["calls"].send(torch.cat(pieces) if pieces else None)
                    self.join(job)  # the next chunk takes the slot just freed
                except StopIteration:
                    windows += st["stream"].plan_finish()
                    finished = True
                except Exception as exc:  # its next chunk cannot start: this request fails, alone
                    self.fail(job, exc)
                    continue
            if windows or finished:
                planned.append((job, windows, finished))
        # Every request's ready windows in one call: batched `codec_batch` at a time (fixed-size
        # batches, so a request's audio does not depend on the others; see decode_windows).
        audio = iter(decode_windows(self.tts.codec, [w for _, ws, _ in planned for w in ws], self.codec_batch))
        return [(job, [(next(audio), ()) for _ in ws], finished) for job, ws, finished in planned]


class Dia2Runner(_SlotRunner):
    """Dia2 requests in a `Dia2SlotBatch`, their audio through one `MimiStream` each."""

    family = "dia2"

    def __init__(self, tts, slots: int) -> None:
        self.tts = tts
        g = tts._generator
        runtime = tts.config.runtime
        # Room for a script at the model's full context plus a voice prefix of up to 30 s (375
        # frames); the cache is allocated once for every slot, so it is not sized for more.
        self.batch = Dia2SlotBatch(g, slots, runtime.max_context_steps + PREFIX_FRAMES + 2 * g.max_delay + 2)
        self.poll_every = POLL_EVERY if tts.device.type == "cpu" else 2 * POLL_EVERY  # (Dia1Runner)
        self._since = 0
        super().__init__()
        self.live: dict[int, Job] = {}  # the members whose text arrives live, by slot

    def plan(self, text: str | None, voice: str | None, seed_default: int | None, options: dict,
             chunk_seconds: float, ticket, live: LiveText | None = None,
             max_chunk_seconds: float | None = None) -> Job:
        opts = dict(options)
        if seed_default is not None:
            opts.setdefault("seed", seed_default)
        gen = self.tts.generation_config(**opts)
        if gen.max_steps is not None and gen.max_steps > self.tts.config.runtime.max_context_steps:
            raise GenerationError(f"max_steps={gen.max_steps} exceeds the model's "
                                  f"{self.tts.config.runtime.max_context_steps} steps")
        entries = None if live is not None else self.tts._entries(text)
        prefix = _quiet(self.tts._prefix, voice, None, False) if voice is not None else None
        frames = max(1, round(chunk_seconds * DIA2_FRAME_RATE))
        largest = max(frames, round((max_chunk_seconds or 0) * DIA2_FRAME_RATE))
        return Job(ticket, state={"gen": gen, "entries": entries, "prefix": prefix, "live": live,
                                  "stream": self.tts.codec.stream(), "every": frames, "largest": largest,
                                  "held": [], "words": []})

    def join(self, job: Job) -> None:
        st = job.state
        job.slot = self.batch.join(st["gen"], st["prefix"], entries=st["entries"], live=st["live"],
                                   tokenizer=self.tts.tokenizer)
        self.jobs[job.slot] = job
        if st["live"] is not None:
            self.live[job.slot] = job

    def drop(self, job: Job) -> None:
        if job.slot is not None and self.live.get(job.slot) is job:
            del self.live[job.slot]
        super().drop(job)

    def waiting(self) -> bool:
        """Every member is waiting for live text (the loop may sleep until some arrives)."""
        members = [m for m in self.batch.members if m is not None]
        return bool(members) and all(m.waiting for m in members)

    def step(self) -> list[tuple[Job, list[tuple[np.ndarray, tuple]], bool]]:
        """One batched step; every `poll_every` steps (and whenever a member finished: the batch
        knows it on the host), (job, new (audio, words) pieces, finished) for the jobs with news."""
        g = self.tts._generator
        if self.live:
            self._feed_live()
        self.batch.step()
        self._since += 1
        ended = self.batch.take_ended()
        if self._since < self.poll_every and not ended:
            return []
        self._since = 0
        out = []
        for slot, job in list(self.jobs.items()):
            member = self.batch.members[slot]
            run = member.run
            job.steps = run.slot - run.p0  # loop steps taken (the prefix warm-up not counted)
            try:
                new = []
                if run.t > run.start and not run.warming:
                    emitted = g.emit(run, run.last)  # every frame that became final since the last poll
                    if emitted is not None:
                        new.append(emitted)
                finished = member.finished
                if finished:
                    g.finish(run)
                    new.append(g.emit_tail(run))
                    self.drop(job)
                pieces = self._audio(job, [n for n in new if n is not None], finished)
            except Exception as exc:  # this member's own output: it fails alone
                self.fail(job, exc)
                continue
            if pieces or finished:
                out.append((job, pieces, finished))
        return out

    def _feed_live(self) -> None:
        """Hand each live member its new text before the step, one member at a time.

        The step would parse it itself (`Dia2SlotBatch._ready`), for all members at once, so text
        that cannot be parsed would fail the whole batch. `CheckedLiveText` refuses such text when
        it arrives; this is the guard behind that check: a member whose text still fails here
        fails alone. Only live members are visited; the step then finds their text taken."""
        for slot, job in list(self.live.items()):
            live = job.state["live"]
            state = self.batch.members[slot].run.state
            if not live.pieces and (not live.ended or state.input_ended):
                continue
            try:
                pieces, ended = live.take()
                for piece in pieces:
                    state.append_text(piece)
                if ended:
                    state.end_input()
            except Exception as exc:
                self.fail(job, exc)

    def _audio(self, job: Job, new, finished: bool) -> list[tuple[np.ndarray, tuple]]:
        """Decode new frames in pieces of `every` frames, growing up to `largest` (ramp_chunk: a split
        that depends on the request alone, so its audio is the same bytes in any company), and hand
        each piece out with the words known by then; the rest at the end."""
        st = job.state
        for codes, words in new:
            if codes.shape[0]:
                job.frames += codes.shape[0]
                st["held"].append(codes)
            st["words"] += words
        pieces = []
        held = torch.cat(st["held"]) if st["held"] else None
        at = 0
        n = 0 if held is None else held.shape[0]
        stream = st["stream"]  # its `frames`: those decoded so far, which set the next piece's length
        while n - at >= (size := ramp_chunk(stream.frames, st["every"], st["largest"])) or (finished and n > at):
            take = min(size, n - at)
            audio = np.clip(stream.push(held[at: at + take].cpu().numpy()), -1.0, 1.0)
            pieces.append((audio, tuple(st["words"])))
            st["words"] = []
            at += take
        st["held"] = [held[at:]] if held is not None and at < n else []
        if finished and st["words"]:
            pieces.append((np.zeros(0, np.float32), tuple(st["words"])))
            st["words"] = []
        return pieces
