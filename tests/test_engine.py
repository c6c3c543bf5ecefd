"""The server's engine in-process: admission, timeouts, cancellation, and audio equal to the library's."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from fastdia.errors import GenerationError, ScriptError
from fastdia.serve.engine import BUILTIN_VOICES, Engine, QueueFullError, RequestTimeoutError, SpeechRequest


@pytest.fixture(scope="module")
def engine():
    e = Engine.load("tiny-random", max_batch=4, max_queue=2)
    e.start()
    yield e
    e.close()


@pytest.fixture(scope="module")
def engine2():
    e = Engine.load("dia2-tiny-random", max_batch=4, max_queue=2)
    e.start()
    yield e
    e.close()


def _audio(ticket) -> np.ndarray:
    return np.concatenate([p.audio for p in ticket])


def test_bad_input_fails_at_submit(engine):
    with pytest.raises(ScriptError):
        engine.submit(SpeechRequest("no speaker tag"))
    with pytest.raises(GenerationError):
        engine.submit(SpeechRequest("[S1] Hi.", options={"temperature": -1}))
    with pytest.raises(GenerationError):
        engine.submit_live(SpeechRequest(""))  # live text is Dia2's


@pytest.mark.parametrize("crowd", [0, 3])
def test_engine_audio_equals_library_stream(engine, engine2, crowd):
    """A seeded request gives the library's streamed audio, alone in the batch or beside `crowd`
    others with other seeds, settings and lengths (one-shot == stream == server for a seed)."""
    script = "[S1] Same audio. [S2] Either way."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.concatenate(list(engine.tts.stream(script, seed=4, max_tokens=100)))
        ref2 = np.concatenate([c.audio for c in engine2.tts.stream(script, seed=4, max_steps=40)])
        one_shot = engine.tts.synthesize(script, seed=4, max_tokens=100).audio
    np.testing.assert_allclose(one_shot, ref, atol=1e-4)
    others = [(f"[S2] Company number {i}. [S1] Fine.", {"seed": 10 + i, "temperature": 0.9 + 0.2 * i})
              for i in range(crowd)]
    t1 = [engine.submit(SpeechRequest(text, options={**o, "max_tokens": 60 + 20 * i}))
          for i, (text, o) in enumerate(others[:1])]
    t2 = [engine2.submit(SpeechRequest(text, options={**o, "max_steps": 30 + 10 * i}))
          for i, (text, o) in enumerate(others[:1])]
    got = engine.submit(SpeechRequest(script, options={"seed": 4, "max_tokens": 100}))
    got2 = engine2.submit(SpeechRequest(script, options={"seed": 4, "max_steps": 40}))
    t1 += [engine.submit(SpeechRequest(text, options={**o, "max_tokens": 60})) for text, o in others[1:]]
    t2 += [engine2.submit(SpeechRequest(text, options={**o, "max_steps": 30})) for text, o in others[1:]]
    np.testing.assert_allclose(_audio(got), ref, atol=1e-4)
    np.testing.assert_allclose(_audio(got2), ref2, atol=1e-4)
    for t in t1 + t2:
        assert len(_audio(t))


def test_builtin_voice_is_a_fixed_seed(engine):
    script = "[S1] Alloy speaks."
    a = _audio(engine.submit(SpeechRequest(script, voice="alloy", options={"max_tokens": 80})))
    b = _audio(engine.submit(SpeechRequest(script, voice="alloy", options={"max_tokens": 80})))
    c = _audio(engine.submit(SpeechRequest(script, options={"max_tokens": 80, "seed": BUILTIN_VOICES["alloy"]})))
    assert np.array_equal(a, b) and np.array_equal(a, c)


# A seed whose run on tiny-random reaches max_tokens (3000 steps, several seconds): an unseeded
# run can sample EOS within a fraction of a second and end before a timeout or a full queue.
LONG_SEED = 2


def test_timeout_cancels(engine):
    ticket = engine.submit(SpeechRequest("[S1] This one runs long.", options={"max_tokens": 3000, "seed": LONG_SEED},
                                         timeout=0.3))
    with pytest.raises(RequestTimeoutError):
        _audio(ticket)
    _wait_idle(engine)


def test_cancel_frees_the_slot_and_full_queue_refuses(engine):
    long = SpeechRequest("[S1] Long.", options={"max_tokens": 3000, "seed": LONG_SEED})
    tickets = [engine.submit(long) for _ in range(6)]  # 4 slots + 2 queue places
    with pytest.raises(QueueFullError) as info:
        engine.submit(long)
    assert info.value.retry_after >= 1
    for t in tickets:
        t.cancel()
    _wait_idle(engine)
    assert engine.stats() == {"queued": 0, "active": 0, "slots": 4}


def test_live_text_through_the_engine(engine2):
    script = "[S1] Pieces of text. [S2] Arrive late."
    whole = _audio(engine2.submit(SpeechRequest(script, options={"seed": 8, "max_steps": 50})))
    live = engine2.submit_live(SpeechRequest("", options={"seed": 8, "max_steps": 50}))
    for k in range(0, len(script), 5):
        live.push(script[k:k + 5])
        time.sleep(0.01)
    live.end()
    pieces = list(live)
    assert np.array_equal(np.concatenate([p.audio for p in pieces]), whole)
    assert [w for p in pieces for w, _ in p.words][:2] == ["Pieces", "of"]


def _wait_idle(engine, limit: float = 10.0) -> None:
    end = time.monotonic() + limit
    while (engine.stats()["active"] or engine.stats()["queued"]) and time.monotonic() < end:
        time.sleep(0.02)
    assert engine.stats()["active"] == 0


def test_codec_batches_do_not_change_a_requests_audio():
    # The DAC decodes every request's ready windows together, 4 at a time (fixed-size batches).
    e = Engine.load("tiny-random", max_batch=4, max_queue=0, codec_batch=4)
    e.start()
    try:
        def request(i):
            return SpeechRequest(f"[S1] Codec batch {i}.", options={"seed": i, "max_tokens": 90}, chunk_seconds=0.1)

        solo = _audio(e.submit(request(2)))
        tickets = [e.submit(request(i)) for i in range(4)]
        together = [_audio(t) for t in tickets]
        assert np.array_equal(together[2], solo)
        one_by_one = np.concatenate(list(e.tts.stream("[S1] Codec batch 2.", seed=2, max_tokens=90,
                                                      chunk_seconds=0.1)))
        np.testing.assert_allclose(solo, one_by_one, atol=1e-4)
    finally:
        e.close()


@pytest.mark.parametrize("which", ["engine", "engine2"])
def test_an_unseeded_request_draws_a_seed_that_makes_it_again(which, request):
    """No seed, no built-in voice: the engine draws a fresh seed, reports it on the ticket (the
    server's x-seed), and a request with that seed gives the same audio."""
    engine = request.getfixturevalue(which)
    limit = {"max_tokens": 60} if engine.family == "dia1" else {"max_steps": 24}
    first = engine.submit(SpeechRequest("[S1] Which seed was that?", options=dict(limit)))
    audio = _audio(first)
    assert isinstance(first.seed, int)
    again = engine.submit(SpeechRequest("[S1] Which seed was that?", options=dict(limit, seed=first.seed)))
    assert again.seed == first.seed and np.array_equal(_audio(again), audio)


def test_pieces_grow_to_the_largest_chunk_and_keep_the_audio(engine, engine2):
    """Pieces of 0.5 s, then each as long as all before it, up to max_chunk_seconds (both
    families); the audio is the fixed pieces' audio (to float rounding)."""
    for e, options, rate in ((engine, {"seed": 3, "max_tokens": 400}, 44100 / 512),
                             (engine2, {"seed": 3, "max_steps": 120}, 12.5)):
        script = "[S1] Growing pieces. [S2] Same audio."
        fixed = [p.audio for p in e.submit(SpeechRequest(script, options=options))]
        grown = [p.audio for p in e.submit(SpeechRequest(script, options=options, max_chunk_seconds=2.0))]
        np.testing.assert_allclose(np.concatenate(grown), np.concatenate(fixed), atol=1e-4)
        frames = [round(len(a) * rate / e.sample_rate) for a in grown if len(a)]
        first = round(0.5 * rate)
        assert frames[:2] == [first, first] and frames[2] == 2 * first, frames
        assert max(frames) == round(2.0 * rate) or sum(frames) < 8 * first, frames
        assert len(grown) < len(fixed)
    with pytest.raises(GenerationError):
        engine.submit(SpeechRequest("[S1] Hi.", max_chunk_seconds=0))
    with pytest.raises(GenerationError):
        engine.submit(SpeechRequest("[S1] Hi.", max_chunk_seconds=float("inf")))
