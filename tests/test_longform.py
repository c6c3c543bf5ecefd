"""Scripts of any length: the splitter's properties, context selection, and end-to-end long scripts."""

from __future__ import annotations

import io
import os
import random
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from fastdia import Dia
from fastdia.errors import ScriptError
from fastdia.dia1.longform import Segment, chunk_seed, select_context
from fastdia.text import (
    DEFAULT_CHUNK_TOKENS,
    MAX_SCRIPT_BYTES,
    LongSentenceWarning,
    retag,
    split_script,
    tokenize,
    validate_script,
)

WORDS = ("well so the model speaks a dialogue now and then with laughter it is quite something really "
         "yes no maybe later today tomorrow").split()


def random_script(seed: int, turns: int, max_sentences: int = 6) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(turns):
        sentences = []
        for _ in range(rng.randint(1, max_sentences)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(2, 14))]
            if rng.random() < 0.15:
                words.append("(laughs)")
            sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", "..."]))
        out.append(f"[S{1 + (i % 2 if rng.random() < 0.8 else rng.randint(0, 1))}] " + " ".join(sentences))
    return (" " if seed % 2 else "\n").join(out)


def spoken(text: str) -> list[tuple[str, str]]:
    """(speaker, word) in order: what must survive splitting, nothing lost or duplicated."""
    out, speaker = [], None
    for tok in re.split(r"(\[S[12]\])|\s+", text):
        if not tok:
            continue
        if re.fullmatch(r"\[S[12]\]", tok):
            speaker = tok
        else:
            out.append((speaker, tok))
    return out


def sentences_of(chunk: str) -> int:
    return len(re.findall(r"[.!?](?:\s|$)", chunk))


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("budget", [40, 100, DEFAULT_CHUNK_TOKENS, 400])
def test_split_script_properties(seed, budget):
    script = random_script(seed, turns=30)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chunks = split_script(script, budget)
    assert spoken(" ".join(chunks)) == spoken(script)  # every word once, with its speaker, in order
    for chunk in chunks:
        assert chunk.startswith(("[S1] ", "[S2] ")) and chunk == chunk.strip()
        validate_script(chunk)
        if len(tokenize(chunk)) > budget:  # only a single sentence may exceed the budget, with a warning
            assert sentences_of(chunk) <= 1, chunk
            assert any(issubclass(w.category, LongSentenceWarning) for w in caught)


def test_split_script_keeps_turns_whole_when_they_fit():
    script = "[S1] One two. [S2] Three! [S1] Four? (laughs)"
    assert split_script(script, 1024) == [script]
    assert split_script(script, 16) == ["[S1] One two.", "[S2] Three!", "[S1] Four? (laughs)"]
    # A long turn splits at sentence ends, every piece keeping its speaker.
    turn = "[S2] " + " ".join(f"Sentence number {i} is here." for i in range(20))
    pieces = split_script(turn, 80)
    assert len(pieces) > 1 and all(p.startswith("[S2] ") for p in pieces)
    assert all(len(tokenize(p)) <= 80 for p in pieces)


def test_split_script_errors_and_warnings():
    with pytest.warns(LongSentenceWarning, match="longer than the chunk budget"):
        chunks = split_script("[S1] " + "word " * 60 + "end.", 100)
    assert len(chunks) == 1
    with pytest.warns(LongSentenceWarning, match="cut at commas"):
        chunks = split_script("[S1] " + "word, " * 200 + "end.", 100)
    assert all(len(tokenize(c)) <= 100 for c in chunks)
    with pytest.raises(ScriptError, match="no space or punctuation"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split_script("[S1] " + "a" * 1100)
    for bad in (0, 8, 2000, "160", True):
        with pytest.raises(ScriptError, match="chunk budget"):
            split_script("[S1] Hi.", bad)


def test_script_ceiling_is_a_clear_error():
    tts = Dia.from_pretrained("tiny-random", device="cpu")
    with pytest.raises(ScriptError, match=f"up to {MAX_SCRIPT_BYTES}"):
        tts.generate_codes("[S1] " + "Hello there. " * 8000)


def test_retag():
    assert retag("[S1] I am Alice. [S1] Still me.", "[S2]") == "[S2] I am Alice. [S2] Still me."
    with pytest.raises(ScriptError, match="both speakers"):
        retag("[S1] A. [S2] B.", "[S1]")


def test_chunk_seeds():
    assert chunk_seed(5, 0) == 5 and chunk_seed(2**70, 0) == 2**70 % 2**63
    seeds = {chunk_seed(5, k) for k in range(100)} | {chunk_seed(6, k) for k in range(100)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)


def seg(text: str, frames: int) -> Segment:
    return Segment(text, torch.zeros((frames, 9), dtype=torch.long))


def test_select_context():
    s1_only, s2_old, mixed = seg("[S1] a.", 300), seg("[S2] b.", 200), seg("[S1] c. [S2] d.", 250)
    voice = seg("[S1] voice.", 100)
    # The previous chunk first; a speaker silent there comes from the last chunk they spoke in.
    assert select_context("[S1] x. [S2] y.", [], [s2_old, s1_only], 3072, 15) == [s2_old, s1_only]
    assert select_context("[S1] x.", [], [s2_old, s1_only], 3072, 15) == [s1_only]
    assert select_context("[S2] x.", [], [s2_old, mixed], 3072, 15) == [mixed]
    # Voices come first, every time, and a voiced speaker needs no history of their own.
    assert select_context("[S1] x. [S2] y.", [voice], [s1_only, s2_old], 3072, 15) == [voice, s2_old]
    # No room: history is dropped (most important kept), voices never.
    assert select_context("[S1] x. [S2] y.", [], [s2_old, s1_only], 600, 15) == [s1_only]
    assert select_context("[S1] x.", [voice], [s1_only], 200, 15) == [voice]
    with pytest.raises(ScriptError, match="voice transcripts"):
        select_context("[S1] x.", [seg("[S1] " + "v" * 1020, 10)], [], 3072, 15)


# ----------------------------------------------------------------------------- end to end

LONG = " ".join(
    f"[S{1 + i % 2}] " + ("Turn {i} is here, and then one more thing. Right?" if i % 3 else
                          "This is turn {i}, said with feeling. (laughs) And more.").format(i=i)
    for i in range(40))  # 40 turns, ~2,300 bytes: about three minutes of speech at Dia's pace


def record_generations(tts, monkeypatch) -> list:
    """Wrap the generator so each chunk's (text tokens, prompt codes) can be inspected."""
    seen = []
    run = tts._generator.run

    def spy(texts, prompts, gen, on_step=None):
        seen.append((texts[0], None if prompts[0] is None else prompts[0].clone(), gen))
        return run(texts, prompts, gen, on_step=on_step)

    monkeypatch.setattr(tts._generator, "run", spy)
    return seen


def test_long_script_chunks_carry_context(tts, monkeypatch):
    script = "[S" + "[S".join(LONG.split("[S")[1:9]).strip()  # 8 turns
    seen = record_generations(tts, monkeypatch)
    # A budget whose chunks, even at their cap (random weights rarely stop), fit as context.
    codes = tts.generate_codes(script, seed=3, chunk_tokens=120, max_tokens=3072)
    chunks = split_script(script, 120)
    tagged = [c.replace("[S1]", "\x01").replace("[S2]", "\x02") for c in chunks]
    assert len(chunks) > 2 and len(seen) >= len(chunks)
    assert seen[0][1] is None and bytes(seen[0][0]).decode() == tagged[0]
    for k in range(1, len(chunks)):
        # Attempts at chunk k (a second one, from the voices alone, only if the first said nothing).
        attempts = [(bytes(t).decode(), p, o) for t, p, o in seen if bytes(t).decode().endswith(" " + tagged[k])]
        assert 1 <= len(attempts) <= 2
        text, prompt, options = attempts[0]
        assert tagged[k - 1] in text  # the previous chunk's transcript, with its audio as the prompt
        assert prompt is not None and prompt.shape[0] > 0
        assert all(o.seed == chunk_seed(3, k) for _, _, o in attempts)
    # Chunk 1's prompt is exactly chunk 0's output: the audio it continues from.
    first = seen[1][1]
    assert torch.equal(first, torch.as_tensor(codes[: first.shape[0]]))


def test_voice_prompt_conditions_every_chunk(tts, monkeypatch):
    script = "[S" + "[S".join(LONG.split("[S")[1:7]).strip()
    prompt = np.random.default_rng(0).integers(0, 1024, (40, 9))
    seen = record_generations(tts, monkeypatch)
    tts.generate_codes(script, seed=1, chunk_tokens=80, audio_prompt=prompt, prompt_text="[S1] My voice.")
    assert len(seen) > 2
    for tokens, codes, _ in seen:
        assert bytes(tokens).startswith(b"\x01 My voice. ")
        assert torch.equal(codes[:40], torch.as_tensor(prompt))


def test_stream_across_chunks_equals_generate(tts):
    script = "[S" + "[S".join(LONG.split("[S")[1:6]).strip()
    kw = dict(seed=4, chunk_tokens=80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(split_script(script, 80)) >= 3
        ref = tts.generate(script, **kw)
        got = np.concatenate(list(tts.stream(script, chunk_seconds=0.3, **kw)))
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_long_batch_equals_alone(tts):
    short, long = "[S1] Short one.", "[S" + "[S".join(LONG.split("[S")[1:5]).strip()
    both = tts.generate_codes([short, long], seed=9, chunk_tokens=80)
    assert np.array_equal(both[0], tts.generate_codes(short, seed=9))
    assert np.array_equal(both[1], tts.generate_codes(long, seed=10, chunk_tokens=80))


def test_three_minute_script_python_and_cli_reproducible(tts, tmp_path):
    """40 turns end to end on tiny-random: Python and the CLI give the same bytes for a seed.
    The CLI (one thread) runs beside the Python call, so the two minutes of work overlap."""
    assert len(LONG.encode()) > 2000 and LONG.count("[S") == 40
    (tmp_path / "script.txt").write_text(LONG)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = subprocess.Popen([sys.executable, "-m", "fastdia.cli.main", "say", "--input", str(tmp_path / "script.txt"),
                            "-o", str(tmp_path / "cli.wav"), "--model", "tiny-random", "--seed", "21", "-q"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            audio = tts.generate(LONG, seed=21)
        _, err = cli.communicate(timeout=900)
    finally:
        if cli.poll() is None:  # stopped by the PID started here
            cli.kill()
            cli.wait()
    # Random weights rarely stop early: each chunk runs towards its cap, so more than 3 minutes.
    assert audio.dtype == np.float32 and len(audio) / 44100 > 120
    tts.save_audio(tmp_path / "py.wav", audio)
    assert cli.returncode == 0, err
    assert (tmp_path / "cli.wav").read_bytes() == (tmp_path / "py.wav").read_bytes()
    data, sr = sf.read(io.BytesIO((tmp_path / "cli.wav").read_bytes()))
    assert sr == 44100 and len(data) == len(audio)
