"""One model behind the server: a bounded queue and a scheduler thread that batches every request.

`Engine.submit` validates a request on the caller's thread (bad input fails there, before any
response is started), then queues it. The scheduler thread loops: it admits queued requests into
free batch slots (each prefilled on its own), runs one batched decode step for all active requests,
hands each its new audio, and frees the slots of finished, cancelled and timed-out requests at once.
So a request never waits for another to finish, only for a free slot, and with a seed its audio
does not depend on what else was running (see fastdia.dia1.slots).

A `Ticket` is the caller's end: an async iterator of `Piece`s (also a plain iterator outside an
event loop), `cancel()`, and for Dia2 live text `push()` / `end()`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue as sync_queue
import secrets
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..backends.cpu.threads import release_pool
from ..audio import check_chunk_seconds
from ..errors import FastDiaError, GenerationError
from ..dia2.slots import LiveText
from .live_text import checked_live_text
from .runners import Dia1Runner, Dia2Runner, Job

log = logging.getLogger("fastdia.serve")

# OpenAI's built-in voice names, which clients send, each mapped to a fixed seed: with no seed in
# the request, "alloy" always draws the same speaker for the same script. (A request's own `seed`
# wins.) Listed by GET /v1/audio/voices.
BUILTIN_VOICES: dict[str, int] = {
    name: 1000 + i for i, name in enumerate(
        ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
         "marin", "cedar"))
}


ADMIT_PER_STEP = 2  # joins between two steps while other requests are decoding (None: no limit)


class QueueFullError(FastDiaError):
    """Every slot is busy and the queue is full; retry after `retry_after` seconds (HTTP 429)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineUnavailableError(FastDiaError):
    """The engine is loading, draining or stopped (HTTP 503)."""


class RequestTimeoutError(FastDiaError):
    """The request ran past its time limit and was cancelled (HTTP 504)."""


@dataclass(frozen=True)
class SpeechRequest:
    """One speech request: the script, a voice (saved name or built-in), sampling options."""

    text: str
    voice: str | None = None
    options: dict = field(default_factory=dict)
    chunk_seconds: float = 0.5
    # Later pieces grow up to this long (fastdia.audio.ramp_chunk); None: every piece chunk_seconds.
    max_chunk_seconds: float | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class Piece:
    """Audio (np.float32 mono at the engine's rate) and the words that start in it (Dia2)."""

    audio: np.ndarray
    words: tuple = ()


_END = object()


class Ticket:
    """The caller's end of a request."""

    def __init__(self, engine: "Engine", request: SpeechRequest, live: LiveText | None = None) -> None:
        self.engine, self.request, self.live = engine, request, live
        self.submitted = time.monotonic()
        limit = request.timeout if request.timeout is not None else engine.timeout
        self.deadline = None if limit is None else self.submitted + limit
        self.cancelled = False
        self.first_audio: float | None = None
        self.usage: dict | None = None
        self.job: Job | None = None
        self.seed: int | None = None  # the concrete seed it draws with (set at submission)
        self._ended = False
        try:
            self._loop = asyncio.get_running_loop()
            self._queue: Any = asyncio.Queue()
        except RuntimeError:  # not in an event loop: a plain blocking iterator
            self._loop, self._queue = None, sync_queue.Queue()

    # ---- the caller's side
    def cancel(self) -> None:
        """Stop generating (the client went away); the rows are freed at the next step."""
        self.cancelled = True
        self.engine._wake()

    def push(self, text: str) -> None:
        """Live text (Dia2): the next piece of the script, any split."""
        if self.live is None:
            raise GenerationError("push() is for live requests (Engine.submit_live)")
        if not isinstance(text, str):
            raise GenerationError(f"text pieces must be strings, got {type(text).__name__}")
        self.live.push(text)
        self.engine._wake()

    def end(self) -> None:
        """Live text (Dia2): the script is complete."""
        if self.live is not None:
            self.live.end()
            self.engine._wake()

    def __aiter__(self):
        return self._agen()

    async def _agen(self):
        try:
            while (item := await self._queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel_if_open()

    def __iter__(self):
        try:
            while (item := self._queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel_if_open()

    def cancel_if_open(self) -> None:
        if self.usage is None:
            self.cancel()

    # ---- the engine's side (scheduler thread)
    def _put(self, item) -> None:
        if self._loop is None:
            self._queue.put(item)
        else:
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:  # the caller's loop is gone; nobody is listening
                self.cancelled = True

    def _closed(self) -> None:
        if not self._ended:
            self._ended = True
            self.engine._release()
            if self.job is not None:
                # The job's working state (codec stream, held frames, the run) goes now: a ticket and
                # its job refer to each other, so only the cycle collector would free them, and a
                # step that allocates few Python objects seldom runs it.
                self.job.state = {}

    def _finish(self, frames: int) -> None:
        text_tokens = getattr(self.live, "size", None) or len(self.request.text.encode("utf-8"))
        # OpenAI's usage shape: the script's tokens (UTF-8 bytes, as Dia reads them) and the
        # codec frames generated.
        self.usage = {"input_tokens": text_tokens, "output_tokens": frames, "total_tokens": text_tokens + frames}
        self._closed()
        self._put(_END)

    def _fail(self, exc: BaseException) -> None:
        self.usage = self.usage or {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        self._closed()
        self._put(exc)
        self._put(_END)


class Engine:
    """A loaded model with its batch scheduler. Create with `Engine.load`, then `start()`."""

    def __init__(self, model_id: str, tts, runner, *, max_batch: int, max_queue: int, timeout: float | None,
                 metrics=None, admit_per_step: int | None = ADMIT_PER_STEP) -> None:
        self.model_id, self.tts, self.runner = model_id, tts, runner
        self.family = runner.family
        self.sample_rate = tts.sample_rate
        self.max_batch, self.max_queue, self.timeout = max_batch, max_queue, timeout
        # Joins (each a prefill) between two steps while others are decoding: a burst of arrivals
        # then delays the running streams by this many prefills per step, not by all of them.
        self.admit_per_step = admit_per_step
        self.metrics = metrics
        self.state = "ready"
        self._pending: collections.deque[Ticket] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._durations: collections.deque[float] = collections.deque(maxlen=32)
        self._open = 0  # accepted requests not yet ended: queued, being prefilled, or decoding
        self._stopped_reason = f"model {model_id!r} stopped"
        self.steps = 0

    @classmethod
    def load(cls, model: str, *, device: str | None = None, dtype: str | None = None, max_batch: int = 8,
             max_queue: int = 64, timeout: float | None = None, voices_dir: str | None = None,
             metrics=None, codec_batch: int | None = None) -> "Engine":
        """Load `model` (preset, directory or hub id; either family) for serving.

        `codec_batch`: Dia-1 audio windows decoded at once across requests (default 1 on CPU,
        8 on CUDA; see fastdia.codecs.dac.codec.decode_windows). Mimi streams (Dia2) keep per-stream
        state and decode one by one."""
        from ..loader import load

        if not isinstance(max_batch, int) or max_batch < 1:
            raise GenerationError(f"max_batch must be a positive integer, got {max_batch!r}")
        if not isinstance(max_queue, int) or max_queue < 0:
            raise GenerationError(f"max_queue must be a non-negative integer, got {max_queue!r}")
        options: dict[str, Any] = {"voices_dir": voices_dir}
        if device is not None:
            options["device"] = device
        if dtype is not None:
            options["dtype"] = dtype
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tts = load(model, **options)
        if getattr(tts, "is_random", False) or "random" in str(model):
            log.warning("%s has random weights: its audio is noise, useful only for trials", model)
        if type(tts).__name__ == "Dia2":
            runner = Dia2Runner(tts, max_batch)
        else:
            if codec_batch is None:
                codec_batch = 8 if tts.device.type == "cuda" else 1
            runner = Dia1Runner(tts, max_batch, codec_batch)
        return cls(str(model), tts, runner, max_batch=max_batch, max_queue=max_queue, timeout=timeout,
                   metrics=metrics)

    # ------------------------------------------------------------------ callers
    def stats(self) -> dict:
        return {"queued": max(0, self._open - self.runner.active), "active": self.runner.active,
                "slots": self.max_batch}

    def submit(self, request: SpeechRequest) -> Ticket:
        """Validate and queue a request; raises FastDiaError subclasses for bad input (400),
        QueueFullError (429) or EngineUnavailableError (503)."""
        return self._submit(request, live=None)

    def submit_live(self, request: SpeechRequest) -> Ticket:
        """A Dia2 request whose script arrives later through `ticket.push()` / `ticket.end()`."""
        if self.family != "dia2":
            raise GenerationError(f"live text input needs a Dia2 model; {self.model_id} is Dia-1")
        return self._submit(request, live=checked_live_text(self.tts))

    def _submit(self, request: SpeechRequest, live: LiveText | None) -> Ticket:
        if self.state != "ready":
            raise EngineUnavailableError(f"model {self.model_id!r} is {self.state}; retry later")
        check_chunk_seconds(request.chunk_seconds)
        largest = request.max_chunk_seconds
        if largest is not None:
            check_chunk_seconds(largest, "max_chunk_seconds")
        ticket = Ticket(self, request, live)
        voice, seed = request.voice, None
        if voice in BUILTIN_VOICES:
            voice, seed = None, BUILTIN_VOICES[voice]
        # Every request gets a concrete seed, reported back (x-seed), so any result can be made
        # again: its own, else its built-in voice's, else a fresh one.
        given = request.options.get("seed")
        ticket.seed = given if given is not None else seed if seed is not None else secrets.randbits(62)
        seed = ticket.seed
        if live is None:
            ticket.job = self.runner.plan(request.text, voice, seed, request.options, request.chunk_seconds, ticket,
                                          max_chunk_seconds=largest)
        else:
            ticket.job = self.runner.plan(None, voice, seed, request.options, request.chunk_seconds, ticket, live=live,
                                          max_chunk_seconds=largest)
        with self._cond:
            if self._open >= self.max_batch + self.max_queue:
                if self.metrics is not None:
                    self.metrics.errors.labels(type="queue_full").inc()
                raise QueueFullError(f"all {self.max_batch} slots are busy and {len(self._pending)} requests are "
                                     "queued; retry later", self._retry_after())
            self._open += 1
            self._pending.append(ticket)
            self._cond.notify()
        self._gauges()
        return ticket

    def _retry_after(self) -> float:
        # About when a slot frees: a typical request's duration over the slots (at least 1 s).
        typical = sorted(self._durations)[len(self._durations) // 2] if self._durations else 2.0
        return max(1.0, typical * (1 + len(self._pending)) / self.max_batch)

    def start(self) -> None:
        if self._thread is None:
            # The calling thread loaded the model: its OpenMP pool, kept, would make the engine
            # thread's pool sleep between kernel calls (fastdia.backends.cpu.threads).
            release_pool()
            self._thread = threading.Thread(target=self._run, name=f"fastdia-engine-{self.model_id}", daemon=True)
            self._thread.start()

    def drain(self, timeout: float = 30.0) -> None:
        """Refuse new requests (503) and wait up to `timeout` s for those queued or running."""
        self.state = "draining"
        end = time.monotonic() + timeout
        while (self._pending or self.runner.active) and time.monotonic() < end:
            time.sleep(0.05)

    def close(self, reason: str | None = None) -> None:
        """Stop the scheduler; requests still open get EngineUnavailableError(`reason`)."""
        self.state = "stopped"
        if reason:
            self._stopped_reason = reason
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for ticket in list(self._pending):
            ticket._fail(EngineUnavailableError(self._stopped_reason))
        self._pending.clear()

    def _release(self) -> None:
        with self._cond:
            self._open -= 1

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # ------------------------------------------------------------------ the scheduler thread
    def _run(self) -> None:
        pooled = False  # whether this thread may hold an OpenMP pool since it last released it
        with torch.inference_mode():
            while True:
                with self._cond:
                    # Sleep while there is nothing to do; wake on submit, cancel, live text, or
                    # every 50 ms (timeouts and cancellations of waiting requests are checked then).
                    while not self._stop and not (self._pending and self.runner.free()) \
                            and (not self.runner.active or self._idle()):
                        if pooled:  # an idle engine's pool would slow the busy ones' (backends.cpu.threads)
                            pooled = not release_pool()
                        self._cond.wait(timeout=0.05)
                        self._sweep_queue()
                    if self._stop:
                        break
                try:
                    pooled = True
                    self._cycle()
                except Exception as exc:  # a bug: fail what is running rather than hang it
                    log.exception("engine %s: step failed", self.model_id)
                    # Not the members' fault, and another request's message is not theirs to read.
                    shared = RuntimeError(f"the batched step failed ({type(exc).__name__}); see the server log")
                    for job in list(self.runner.jobs.values()):
                        self.runner.drop(job)
                        job.ticket._fail(shared)
        for job in list(self.runner.jobs.values()):
            self.runner.drop(job)
            job.ticket._fail(EngineUnavailableError(self._stopped_reason))

    def _idle(self) -> bool:
        """Nothing can step: every active request waits for live text and none has been cancelled."""
        waiting = getattr(self.runner, "waiting", None)
        if waiting is None or not waiting():
            return False
        now = time.monotonic()
        return not any(j.ticket.cancelled or (j.ticket.deadline is not None and now > j.ticket.deadline)
                       or (j.ticket.live is not None and (j.ticket.live.pieces or j.ticket.live.ended))
                       for j in self.runner.jobs.values())

    def _cycle(self) -> None:
        now = time.monotonic()
        # Leave: cancelled and timed-out requests free their slots before the step.
        for job in list(self.runner.jobs.values()):
            if self._expired(job.ticket, now):
                self.runner.drop(job)
        with self._cond:
            self._sweep_queue()
        # Join: queued requests take the free slots, in order; while others are decoding, at most
        # `admit_per_step` per step (the rest join at the next steps).
        limit = self.admit_per_step if self.runner.active and self.admit_per_step else None
        joined = 0
        while self._pending and self.runner.free() and (limit is None or joined < limit):
            with self._cond:
                ticket = self._pending.popleft()
            if self._expired(ticket, now):
                continue
            joined += 1
            try:
                self.runner.join(ticket.job)
            except Exception as exc:
                ticket._fail(exc if isinstance(exc, FastDiaError) else GenerationError(f"could not start: {exc}"))
        self._gauges()
        if not self.runner.active:
            return
        occupancy = self.runner.active / self.max_batch
        results = self.runner.step()
        self.steps += 1
        for job, exc in self.runner.take_failed():
            self._member_failed(job, exc)
        if self.metrics is not None:
            self.metrics.decode_steps.labels(model=self.model_id).inc()
            self.metrics.batch_occupancy.labels(model=self.model_id).observe(occupancy)
        for job, pieces, finished in results:
            ticket = job.ticket
            for audio, words in pieces:
                if not len(audio) and not words:
                    continue
                if ticket.first_audio is None and len(audio):
                    ticket.first_audio = time.monotonic()
                    if self.metrics is not None:
                        self.metrics.time_to_first_audio.labels(model=self.model_id).observe(
                            ticket.first_audio - ticket.submitted)
                ticket._put(Piece(audio, tuple(words)))
            if finished:
                self._durations.append(time.monotonic() - ticket.submitted)
                ticket._finish(job.frames)

    def _member_failed(self, job: Job, exc: BaseException) -> None:
        """A request that failed on its own during a step: it alone ends, with its own error."""
        if isinstance(exc, FastDiaError):
            log.info("engine %s: a request failed during its step: %s", self.model_id, exc)
        else:  # a bug in fastdia, confined to this request
            log.error("engine %s: a request failed during its step", self.model_id, exc_info=exc)
        job.ticket._fail(exc)

    def _sweep_queue(self) -> None:
        """Queued requests that were cancelled or timed out leave the queue (and free its places).
        Called with the lock held."""
        now = time.monotonic()
        gone = [t for t in self._pending if t.cancelled or (t.deadline is not None and now > t.deadline)]
        for t in gone:
            self._pending.remove(t)
            self._expired(t, now)

    def _expired(self, ticket: Ticket, now: float) -> bool:
        if ticket.cancelled:
            ticket._fail(GenerationError("cancelled"))
            return True
        if ticket.deadline is not None and now > ticket.deadline:
            limit = ticket.deadline - ticket.submitted
            ticket._fail(RequestTimeoutError(f"the request ran past its {limit:g} s time limit and was cancelled"))
            if self.metrics is not None:
                self.metrics.errors.labels(type="timeout").inc()
            return True
        return False

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(model=self.model_id).set(len(self._pending))
            self.metrics.active_rows.labels(model=self.model_id).set(2 * self.runner.active)


__all__ = ["Engine", "SpeechRequest", "Ticket", "Piece", "BUILTIN_VOICES", "QueueFullError",
           "EngineUnavailableError", "RequestTimeoutError"]
