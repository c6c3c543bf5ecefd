"""Dia2 text side against the golden fixtures of the reference runtime (shared/fixtures/dia2).

Tokenizer calls, parsed entries, the voice-prefix plan, and a replay of the recorded model
actions through the state machine (warm-up included), which must give the recorded text
streams, counters, end step, transcript and timestamps; the same with the script streamed in
pieces; plus the spec's worked trace and the script errors.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tests.conftest import dia2_fixtures
from fastdia.errors import GenerationError, ScriptError
from fastdia.dia2.state import Dia2TextState, TextStarvedError
from fastdia.text import UnlistedTagWarning
from fastdia.dia2.text import (
    Dia2TextIds,
    Dia2Tokenizer,
    ScriptEntry,
    ScriptParser,
    build_prefix_plan,
    normalize_script,
    output_crop,
    parse_script,
    word_timestamps,
)

FIXTURES = dia2_fixtures()
pytestmark = pytest.mark.skipif(not (FIXTURES / "cases.json").is_file(), reason="Dia2 fixtures not available")

CASES = json.loads((FIXTURES / "cases.json").read_text()) if (FIXTURES / "cases.json").is_file() else {"cases": []}
CASE_NAMES = [c["name"] for c in CASES["cases"]]
K_AHEAD = 2  # the fixture model's data.second_stream_ahead
COUNTERS = {  # fixture array -> state attribute, after process(t)
    "sm_padding_budget": lambda s: s.padding_budget,
    "sm_forced_padding": lambda s: s.forced_padding,
    "sm_pending": lambda s: len(s.pending),
    "sm_lookahead": lambda s: len(s.lookahead),
}


@pytest.fixture(scope="module")
def tok():
    return Dia2Tokenizer.from_file(FIXTURES / "model")


@pytest.fixture(scope="module")
def ids(tok):
    t = CASES["token_ids"]
    return tok.text_ids(pad=t["text_pad"], new_word=t["text_new_word"], zero=t["text_zero"])


def case(name):
    c = next(c for c in CASES["cases"] if c["name"] == name)
    return c, np.load(FIXTURES / c["arrays"])


def entry_dicts(entries):
    return [{"text": e.text, "tokens": list(e.tokens), "padding": e.padding} for e in entries]


def prefix_plan(c, tok):
    if "prefix" not in c:
        return None
    p, frames = c["prefix"], c["prefix_plan"]["frames_per_speaker"]
    return build_prefix_plan(tok, (p["speaker_1"]["words"], frames[0]), (p["speaker_2"]["words"], frames[1]))


# ---- tokenizer, parsing, prefix plan --------------------------------------------------------


def test_runtime_ids(ids):
    t = CASES["token_ids"]
    assert ids == Dia2TextIds(t["text_bos"], t["text_pad"], t["text_new_word"], t["text_zero"], t["spk1"], t["spk2"])


@pytest.mark.parametrize("name", CASE_NAMES)
def test_tokenizer_calls(tok, name):
    c, _ = case(name)
    for text, expected in c["tokenizer_calls"]:
        assert tok.encode(text) == expected, text


@pytest.mark.parametrize("name", CASE_NAMES)
def test_parsed_entries(tok, ids, name):
    c, _ = case(name)
    assert entry_dicts(parse_script(c["script"], tok, ids)) == c["script_entries"]


@pytest.mark.parametrize("name", [n for n in CASE_NAMES if "prefix" in case(n)[0]])
def test_prefix_plan(tok, name):
    c, _ = case(name)
    plan, expected = prefix_plan(c, tok), c["prefix_plan"]
    assert entry_dicts(plan.entries) == expected["entries"]
    assert list(plan.new_word_steps) == expected["new_word_steps"]
    assert list(plan.frames_per_speaker) == expected["frames_per_speaker"]
    assert plan.frames_total == expected["frames_total"] == c["result"]["start_step"] + 1


# ---- state machine replay -------------------------------------------------------------------


def replay(c, z, state, plan, feed=None):
    """Drive `state` with the recorded warm-up tokens and sampled actions; compare every step.

    `feed(state)` (streaming) is called before each step and again whenever a step is starved.
    """
    if plan is not None:
        forced = z["warmup_forced_token"]
        for t in range(plan.frames_total):
            assert (forced[t] == CASES["token_ids"]["text_new_word"]) == plan.forced_new_word(t)
            out = step_with(state, lambda t=t: state.force(t, plan.forced_new_word(t)), feed)
            assert (out.main, out.second) == (z["warmup_text_main"][t], z["warmup_text_second"][t]), f"warm-up {t}"
    for i, t in enumerate(z["loop_step"].tolist()):
        out = step_with(state, lambda t=t, a=int(z["action"][i]): state.step(t, a), feed)
        assert (out.main, out.second) == (z["text_main"][i], z["text_second"][i]), f"step {t}"
        assert out.action_free == bool(z["action_free"][i]), f"step {t}"
        for key, get in COUNTERS.items():
            assert get(state) == z[key][i], f"{key} at step {t}"
        assert out.end_of_speech == (t == c["result"]["end_step"])
    r = c["result"]
    assert state.end_step == r["end_step"]
    assert [[w.text, w.step] for w in state.transcript] == r["transcript"]
    crop = output_crop(r["start_step"], state.first_main_new_word_step, c["generation"]["initial_padding"],
                       c.get("prefix", {}).get("include_prefix", False))
    assert crop == r["crop"]
    skip = 0 if c.get("prefix", {}).get("include_prefix", True) else state.num_prefix_entries
    assert word_timestamps(state.transcript, crop, skip_words=skip) == [tuple(x) for x in r["timestamps"]]


def step_with(state, call, feed):
    while True:
        if feed is not None:
            feed(state)
        try:
            return call()
        except TextStarvedError:
            assert feed is not None and not state.input_ended
            feed(state, force=True)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_replay_whole_script(tok, ids, name):
    c, z = case(name)
    plan = prefix_plan(c, tok)
    state = Dia2TextState(
        ids,
        second_stream_ahead=K_AHEAD,
        initial_padding=c["generation"]["initial_padding"],
        entries=parse_script(c["script"], tok, ids),
        prefix_entries=plan.entries if plan else (),
    )
    replay(c, z, state, plan)
    # The action sampled at the end step is still a new word; the end then stays put.
    assert state.finished and state.entries_left == 0


def pieces(text, rng, n):
    cuts = sorted(rng.sample(range(1, len(text)), min(n, len(text) - 1)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("seed", range(4))
def test_replay_streamed_script(tok, ids, name, seed):
    """The script arrives in random pieces during generation: text is appended one piece per step
    (and more whenever a step is starved), the end of input last. Same streams as all at once."""
    c, z = case(name)
    plan = prefix_plan(c, tok)
    rng = random.Random(seed)
    queue = pieces(c["script"], rng, rng.randint(1, len(c["script"]) // 2))
    starved = []

    def feed(state, force=False):
        if force:
            starved.append(1)
        if queue and (force or rng.random() < 0.5):
            state.append_text(queue.pop(0))
        elif force:
            state.end_input()

    state = Dia2TextState(
        ids, second_stream_ahead=K_AHEAD, tokenizer=tok, prefix_entries=plan.entries if plan else ()
    )
    assert state.needs_text == (plan is None)
    replay(c, z, state, plan, feed)
    assert state.input_ended
    assert starved  # the text ran short at least once (the end of input always does)


def test_streamed_pieces_then_end_give_the_same_entries(tok, ids):
    rng = random.Random(7)
    for c in CASES["cases"]:
        for n in (1, 3, len(c["script"]) - 1):
            parser, got = ScriptParser(tok, ids), []
            for piece in pieces(c["script"], rng, n):
                got += parser.feed(piece)
            got += parser.finish()
            assert entry_dicts(got) == c["script_entries"], n
        for cut in range(1, len(c["script"])):  # every two-piece split
            parser = ScriptParser(tok, ids)
            got = parser.feed(c["script"][:cut]) + parser.feed(c["script"][cut:]) + parser.finish()
            assert entry_dicts(got) == c["script_entries"], cut


def test_starved_step_changes_nothing(tok, ids):
    state = Dia2TextState(ids, second_stream_ahead=K_AHEAD, tokenizer=tok, initial_padding=0)
    state.append_text("[S1] Hello there")  # "there" may still grow
    with pytest.raises(TextStarvedError):
        state.step(0, 1)
    assert (state.padding_budget, state.forced_padding, state.transcript) == (0, 0, [])
    state.append_text(" friend")  # "friend" may still grow: Hello's look-ahead is not known
    with pytest.raises(TextStarvedError):
        state.step(0, 1)
    assert state.needs_text
    state.append_text(" ")
    assert not state.needs_text
    out = state.step(0, 1)
    assert out.word.text == "Hello" and out.second == ids.new_word


# ---- the spec's worked trace (section 4.3), fake ids ----------------------------------------

TRACE_IDS = Dia2TextIds(bos=1, pad=3, new_word=2, zero=7, spk1=900, spk2=901)
TRACE_ENTRIES = [
    ScriptEntry("Hello", (900, 100, 101), 3),
    ScriptEntry("world.", (102,), 1),
    ScriptEntry("", (), 5),
    ScriptEntry("Hi", (901, 103), 2),
    ScriptEntry("there,", (104, 105, 106), 3),
    ScriptEntry("friend.", (107,), 1),
]


def test_spec_trace_always_new_word():
    state = Dia2TextState(TRACE_IDS, second_stream_ahead=2, entries=TRACE_ENTRIES)
    got = [(o.main, o.second) for o in (state.step(t, 1) for t in range(25))]
    expected = [(3, 3), (3, 3), (900, 2), (100, 901), (101, 103), (3, 3), (102, 2), (3, 104), (3, 105),
                (3, 106), (3, 3), (3, 3), (3, 3), (901, 2), (103, 107), (3, 3), (104, 2), (105, 3), (106, 3),
                (3, 3), (107, 2), (3, 3), (3, 2), (3, 3), (3, 3)]
    assert got == expected
    assert state.end_step == 22
    assert [(w.text, w.step) for w in state.transcript] == [
        ("Hello", 2), ("world.", 6), ("Hi", 13), ("there,", 16), ("friend.", 20)]


def test_spec_trace_always_pad_forces_progress():
    state = Dia2TextState(TRACE_IDS, second_stream_ahead=2, entries=TRACE_ENTRIES)
    for t in range(60):
        state.step(t, 0)
    assert [(w.text, w.step) for w in state.transcript] == [
        ("Hello", 2), ("world.", 9), ("Hi", 21), ("there,", 28), ("friend.", 35)]


def test_no_second_stream_duplicates_main():
    state = Dia2TextState(TRACE_IDS, second_stream_ahead=0, entries=TRACE_ENTRIES[:2])
    outs = [state.step(t, 1) for t in range(8)]
    assert all(o.main == o.second for o in outs)
    assert [o.main for o in outs[:4]] == [3, 3, 2, 900]
    assert state.first_main_new_word_step == 2 and output_crop(0, 2, 2) == 0


# ---- script normalisation and errors --------------------------------------------------------


def test_normalisation(tok, ids):
    assert normalize_script(["  [S1] It’s:", "ok  "]) == "[S1] It's \nok"
    entries = parse_script("[S2] Hi <break time=\"0.2s\"/>there<break time=\"0s\">x", tok, ids)
    assert [e.text for e in entries] == ["Hi", "", "there", "x"]
    assert entries[0].tokens[:2] == (ids.spk1, ids.spk2)  # the [S1][S2] quirk
    assert entries[1].padding == 2  # round(2.5) is 2: half to even


@pytest.mark.parametrize(
    "script, message",
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("[S1]", "nothing to say"),
        ("<break time=\"1s\"/>", "empty"),
        ("[S1] Hi [S2]", "ends with the speaker tag"),
        ("[S1] [S2] Hi", "follow each other"),
        ("[S3] Hi", "unknown tag [S3]"),
        ("[S1] Hi [laughs]", "parentheses"),
        ("[S1] Hi[S2] there", "stuck to other text"),
        ("[S1] Hi <break time=\"1s\" />", "malformed tag"),
        ("[S1] Hi <pause>", "malformed tag"),
        ("[S1] Hi \x01", "control character"),
        (42, "string"),
    ],
)
def test_script_errors(tok, ids, script, message):
    with pytest.raises(ScriptError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_script(script, tok, ids)


def test_unlisted_nonverbal_warns(tok, ids):
    with pytest.warns(UnlistedTagWarning, match="giggles"):
        parse_script("[S1] Hi (giggles)", tok, ids)


def test_prefix_speaker_2_alone_is_an_error(tok):
    with pytest.raises(GenerationError, match="speaker-1"):
        build_prefix_plan(tok, None, ([("Hi", 0.1, 0.3)], 5))
    assert build_prefix_plan(tok, None) is None


def test_streaming_input_misuse(tok, ids):
    state = Dia2TextState(ids, second_stream_ahead=2, tokenizer=tok)
    state.append_text("[S1] Hi")
    state.end_input()
    with pytest.raises(ValueError, match="already ended"):
        state.append_text(" more")
    with pytest.raises(ValueError, match="tokenizer"):
        Dia2TextState(ids, second_stream_ahead=2, entries=TRACE_ENTRIES).append_text("x")
