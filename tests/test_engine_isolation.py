"""One request's failure stays its own (issue 30): live text is checked before the step, and a member
that still fails during a step leaves alone while the others' audio is what it is without it."""

from __future__ import annotations

import numpy as np
import pytest

from fastdia.dia2.slots import LiveText
from fastdia.errors import ScriptError
from fastdia.serve.engine import Engine, SpeechRequest
from fastdia.serve.live_text import checked_live_text
from fastdia.text import MAX_SCRIPT_BYTES

PIECES = ("[S1] Good ", "morning to ", "you. [S2] And to you.")
OPTIONS = {"seed": 5, "max_steps": 60}


@pytest.fixture(scope="module")
def engine2():
    e = Engine.load("dia2-tiny-random", max_batch=4, max_queue=4)
    e.start()
    yield e
    e.close()


def _audio(ticket) -> np.ndarray:
    return np.concatenate([p.audio for p in ticket])


@pytest.mark.parametrize("pieces, words", [
    (["[S1][S2][S1]"], "stuck to other text"),
    (["[S1] Hi [S3] you"], "unknown tag"),
    (["[S1]", "   "], "nothing to say"),
    ([""], "empty"),
    (["[S1] a\x01"], "control character"),
])
def test_checked_live_text_refuses_before_the_step(engine2, pieces, words):
    live = checked_live_text(engine2.tts)
    with pytest.raises(ScriptError, match=words):
        for piece in pieces:
            live.push(piece)
        live.end()
    taken, ended = live.take()
    assert not ended  # the step never sees the end of a script it would refuse
    assert all(p in pieces for p in taken)
    with pytest.raises(ScriptError, match="already refused"):
        live.push("[S1] more")


def test_checked_live_text_limits_a_session(engine2):
    live = checked_live_text(engine2.tts)
    live.push("[S1] " + "a " * (MAX_SCRIPT_BYTES // 2 - 4))
    with pytest.raises(ScriptError, match=str(MAX_SCRIPT_BYTES)):
        live.push("b " * 10)
    assert live.size <= MAX_SCRIPT_BYTES


def test_a_member_whose_text_fails_in_the_step_fails_alone(engine2):
    alone = engine2.submit_live(SpeechRequest("", options=OPTIONS))
    for piece in PIECES:
        alone.push(piece)
    alone.end()
    reference = _audio(alone)

    good = engine2.submit_live(SpeechRequest("", options=OPTIONS))
    good.push(PIECES[0])  # it joins the batch and waits there for the rest
    http = engine2.submit(SpeechRequest("[S1] Running beside them.", options=OPTIONS))
    bad = engine2.submit_live(SpeechRequest("", options={"seed": 6}))
    # Past the caller-side check (as a bug there would let it through): the runner's guard must catch it.
    LiveText.push(bad.live, "[S1][S2][S1]")
    LiveText.end(bad.live)
    engine2._wake()
    with pytest.raises(ScriptError, match="stuck to other text"):
        list(bad)
    for piece in PIECES[1:]:
        good.push(piece)
    good.end()
    np.testing.assert_array_equal(_audio(good), reference)
    assert len(_audio(http)) > 0 and http.usage["output_tokens"] > 0
    assert engine2.runner.active == 0 and not engine2.runner.failed
