"""Dia2 text side: tokenizer, script normalisation and parsing, voice-prefix words, timestamps.

Spec: `shared/spec/dia2.md` sections 4.1, 4.2, 4.6 and 6; verified against the golden fixtures in
`shared/fixtures/dia2` (tests/test_dia2_text.py). The action/new-word state machine that consumes
the entries parsed here lives in `fastdia/dia2/state.py`.

A Dia2 script is whitespace-separated words with standalone speaker tags `[S1]`/`[S2]`, optional
non-verbal tokens such as `(laughs)` and pauses `<break time="0.4s"/>`. Unlike Dia-1, a script
without a leading tag is valid: the first word is always spoken as `[S1]` (the reference runtime
inserts the tag, and the fixture `single_nonverbal_break_cfg6` relies on it).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import GenerationError, ScriptError
from ..text import BOM, UnlistedTagWarning, _check_characters

FRAME_RATE = 12.5  # Mimi frames (and state-machine steps) per second
SPEAKER_TAGS = ("[S1]", "[S2]")
# Speaker-1 prefix word steps are shifted by this "legacy BOS/PAD offset"; speaker 2's are not
# (a reference inconsistency the fixtures confirm: new_word_steps [4, 10, 15, 20]).
PREFIX_S1_STEP_OFFSET = 3

# A pause: digits, optional fraction, "s", optional "/". Anything else that looks like a tag is
# refused rather than spoken as text (the reference would read `<break time="1s" />` aloud).
_BREAK = r'<break time="(\d+(?:\.\d+)?)s"/?>'
_SEPARATOR = re.compile(r"\s+|" + _BREAK)
_BREAK_HEAD = '<break time="'
# What may follow the head in a pause tag that is cut short (the complete tag ends with ">").
_BREAK_TAIL_PARTIAL = re.compile(r'(?:\d+(?:\.\d*)?)?|\d+(?:\.\d+)?s(?:"/?)?')
_ANGLE_TAG = re.compile(r"<[^<>]*>|<break\b")
_BRACKET_TAG = re.compile(r"\[[^\[\]]*\]")
_PAREN_TAG = re.compile(r"\(([^()]{1,40})\)")


# --------------------------------------------------------------------------------------------
# Tokenizer and runtime ids (spec 4.1)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dia2TextIds:
    """Text ids the runtime feeds: bos (tokenizer bos, or 1 if missing or 0), pad / new_word /
    zero (from the config's data block) and the speaker tags (new_word if not in the vocab)."""

    bos: int
    pad: int
    new_word: int
    zero: int
    spk1: int
    spk2: int


class Dia2Tokenizer:
    """The Dia2 byte-level BPE tokenizer, loaded from `tokenizer.json` with `tokenizers` only.

    Every call is `encode(text, add_special_tokens=False)`, which gives the same ids as the
    reference's slow GPT2Tokenizer for all calls recorded in the fixtures.
    """

    def __init__(self, tokenizer, bos_token: str | None = None):
        self._tok = tokenizer
        self._bos_token = bos_token
        added = tokenizer.get_added_tokens_decoder()
        self.added_tokens = frozenset(t.content for t in added.values())
        # Non-verbal sounds the model has a single token for, e.g. "(laughs)".
        self.nonverbal_tags = frozenset(t for t in self.added_tokens if t.startswith("(") and t.endswith(")"))

    @classmethod
    def from_file(cls, path: str | Path) -> Dia2Tokenizer:
        """Load `tokenizer.json` (a file, or a directory holding it and its config files)."""
        from tokenizers import Tokenizer

        path = Path(path)
        folder = path if path.is_dir() else path.parent
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no Dia2 tokenizer at {file}: expected the model folder's tokenizer.json")
        return cls(Tokenizer.from_file(str(file)), _bos_token_name(folder))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return None if self._bos_token is None else self.token_id(self._bos_token)

    def text_ids(self, pad: int, new_word: int, zero: int = 7) -> Dia2TextIds:
        """Runtime ids; pad/new_word/zero are the config's `text_*_token_id` values."""
        bos = self.bos_token_id
        spk1, spk2 = (self.token_id(tag) for tag in SPEAKER_TAGS)
        return Dia2TextIds(
            bos=1 if not bos else bos,  # the reference's fallback: the Dia2 tokenizer reports 0
            pad=pad,
            new_word=new_word,
            zero=zero,
            spk1=new_word if spk1 is None else spk1,
            spk2=new_word if spk2 is None else spk2,
        )


def _bos_token_name(folder: Path) -> str | None:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = folder / name
        if file.is_file():
            bos = json.loads(file.read_text(encoding="utf-8")).get("bos_token")
            if isinstance(bos, dict):
                bos = bos.get("content")
            if bos:
                return bos
    return None


# --------------------------------------------------------------------------------------------
# Script entries (spec 4.2)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptEntry:
    """One word (or pause) of the script as the state machine consumes it.

    Attributes:
        text: the word as written after normalisation ("" for a pause).
        tokens: its text ids (none for a pause).
        padding: the minimum number of forced pad steps after the word starts: len(tokens) for a
            script word, round(seconds * 12.5) for a pause.
    """

    text: str
    tokens: tuple[int, ...]
    padding: int

    @property
    def is_pause(self) -> bool:
        return not self.tokens


def normalize_script(script: str | Sequence[str]) -> str:
    """The text the parser reads: lines joined with newlines, stripped, `’` -> `'`, `:` -> space."""
    if isinstance(script, (list, tuple)):
        if not all(isinstance(line, str) for line in script):
            raise ScriptError("a Dia2 script given as a list must be a list of strings (lines)")
        script = "\n".join(script)
    if not isinstance(script, str):
        raise ScriptError(f"the script must be a string or a list of lines, got {type(script).__name__}")
    return _normalize_chars(script.removeprefix(BOM)).strip()


def _normalize_chars(text: str) -> str:
    return text.replace("\u2019", "'").replace(":", " ")


class ScriptParser:
    """Incremental parser: feed script text in pieces, then `finish()`; returns entries as they
    become certain (a word is complete once whitespace or a pause follows it, or at the end).

    Feeding a script in any split gives exactly the entries of `parse_script` on the whole text.
    After a ScriptError the parser must not be used again.
    """

    def __init__(self, tokenizer: Dia2Tokenizer, ids: Dia2TextIds | None = None):
        self._tok = tokenizer
        spk1 = ids.spk1 if ids is not None else tokenizer.token_id(SPEAKER_TAGS[0])
        if spk1 is None:
            raise ValueError("this tokenizer has no [S1] token: pass the runtime ids (Dia2Tokenizer.text_ids)")
        self._spk1 = spk1
        self._buf = ""
        self._started = False
        self._finished = False
        self._speaker: str | None = None  # a tag waiting for its word
        self.num_words = 0

    def feed(self, text: str) -> list[ScriptEntry]:
        if self._finished:
            raise ScriptError("the script was already ended; start a new one to say more")
        if not isinstance(text, str):
            raise ScriptError(f"script text must be a string, got {type(text).__name__}")
        _check_characters(text, "script")
        if not self._started and text:
            text = text.removeprefix(BOM)
            self._started = True
        self._buf += _normalize_chars(text)
        return self._drain(final=False)

    def finish(self) -> list[ScriptEntry]:
        """End of input: the last word, and the checks that need the whole script."""
        if self._finished:
            return []
        entries = self._drain(final=True)
        self._finished = True
        if self._speaker is not None:
            if self.num_words == 0:
                raise ScriptError(
                    f"the script has the speaker tag {self._speaker} but nothing to say; "
                    f"write words after it, e.g. \"{self._speaker} Hello there.\""
                )
            raise ScriptError(
                f"the script ends with the speaker tag {self._speaker} and no words after it; "
                "remove the tag or finish the line"
            )
        if self.num_words == 0:
            raise ScriptError(
                "the script is empty (no words to speak); write dialogue such as "
                "\"[S1] Hello there. [S2] Hi!\""
            )
        return entries

    def _drain(self, final: bool) -> list[ScriptEntry]:
        out: list[ScriptEntry] = []
        pos = 0
        # A pause tag has a space inside: while one may be arriving, its text and the piece
        # before it stay in the buffer.
        cut = len(self._buf) if final else _partial_break_start(self._buf)
        for match in _SEPARATOR.finditer(self._buf, 0, cut):
            self._word(self._buf[pos : match.start()], out)
            if match.group(1) is not None:
                seconds = float(match.group(1))
                if seconds > 0:  # a zero-length break is dropped
                    out.append(ScriptEntry("", (), round(seconds * FRAME_RATE)))  # half-to-even
            pos = match.end()
        rest = self._buf[pos:]
        # The trailing piece may still grow (a word, or a pause tag cut mid-way).
        if final:
            self._word(rest, out)
            rest = ""
        self._buf = rest
        return out

    def _word(self, word: str, out: list[ScriptEntry]) -> None:
        if not word:
            return
        if word in SPEAKER_TAGS:
            if self._speaker is not None:
                raise ScriptError(
                    f"speaker tags {self._speaker} {word} follow each other with no words between; "
                    "remove one of them"
                )
            self._speaker = word
            return
        _check_word(word, self._tok)
        text = word if self._speaker is None else f"{self._speaker} {word}"
        tokens = self._tok.encode(text)
        if self.num_words == 0 and tokens[:1] != [self._spk1]:
            # The reference speaks the first word as [S1] whatever it is tagged ("[S2] Hi" becomes
            # [S1][S2] Hi: a quirk kept for parity). Unverified: a script that starts with a pause;
            # here the tag goes to the first word, never to the pause.
            tokens = [self._spk1, *tokens]
        self._speaker = None
        self.num_words += 1
        out.append(ScriptEntry(word, tuple(tokens), len(tokens)))


def _partial_break_start(text: str) -> int:
    """Where a pause tag cut short by the end of `text` starts (len(text) if there is none)."""
    start = text.rfind("<")
    if start < 0:
        return len(text)
    tail = text[start:]
    if len(tail) <= len(_BREAK_HEAD):
        partial = _BREAK_HEAD.startswith(tail)
    else:
        partial = tail.startswith(_BREAK_HEAD) and _BREAK_TAIL_PARTIAL.fullmatch(tail[len(_BREAK_HEAD):])
    return start if partial else len(text)


def _check_word(word: str, tokenizer: Dia2Tokenizer) -> None:
    for match in _BRACKET_TAG.finditer(word):
        tag = match.group(0)
        if tag in SPEAKER_TAGS:
            raise ScriptError(
                f"speaker tag {tag} is stuck to other text in {word!r}; put spaces around it, "
                f"e.g. \"{tag} Hello\""
            )
        raise ScriptError(
            f"unknown tag {tag} in {word!r}: the only speaker tags are [S1] and [S2]; "
            "write non-verbal sounds in parentheses, e.g. (laughs)"
        )
    match = _ANGLE_TAG.search(word)
    if match:
        raise ScriptError(
            f"unknown or malformed tag {match.group(0)!r} in {word!r}: the only tag in angle brackets is a "
            'pause, written exactly like <break time="0.5s"/>'
        )
    for match in _PAREN_TAG.finditer(word):
        if match.group(0) not in tokenizer.nonverbal_tags and len(match.group(1).split()) <= 3:
            known = ", ".join(sorted(tokenizer.nonverbal_tags)) or "none"
            warnings.warn(
                f"{match.group(0)} is not a non-verbal sound Dia2 has a token for, so it is read as "
                f"text; known: {known}",
                UnlistedTagWarning,
                stacklevel=4,
            )


def parse_script(
    script: str | Sequence[str], tokenizer: Dia2Tokenizer, ids: Dia2TextIds | None = None
) -> list[ScriptEntry]:
    """The entries of a whole script (a string, or lines joined with newlines)."""
    parser = ScriptParser(tokenizer, ids)
    return parser.feed(normalize_script(script)) + parser.finish()


# --------------------------------------------------------------------------------------------
# Voice prefixes (spec 6): transcribed words -> forced entries of the warm-up
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefixWord:
    """A word of a voice prefix's transcript, with its start and end in seconds."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class PrefixPlan:
    """What a voice prefix feeds the state machine.

    Attributes:
        entries: the prefix words, speaker 1's then speaker 2's.
        new_word_steps: warm-up steps at which a new word is forced.
        frames_per_speaker: Mimi frames of each prefix audio.
    """

    entries: tuple[ScriptEntry, ...]
    new_word_steps: tuple[int, ...]
    frames_per_speaker: tuple[int, ...]

    @property
    def frames_total(self) -> int:
        """P0: warm-up steps; generation starts at step P0 - 1."""
        return sum(self.frames_per_speaker)

    def forced_new_word(self, step: int) -> bool:
        return step in self.new_word_steps


def prefix_speaker_entries(
    words: Iterable[PrefixWord | Sequence], speaker: str, tokenizer: Dia2Tokenizer
) -> tuple[list[ScriptEntry], list[int]]:
    """One speaker's prefix words as entries and their (unshifted) new-word steps.

    The first word is spoken with the speaker tag. A word starts at max(previous end + 1,
    round(start * 12.5)) frames and lasts len(tokens) frames; its new word fires one step before
    it starts; its padding reaches to the next word's start (or the last word's end).
    """
    if speaker not in SPEAKER_TAGS:
        raise GenerationError(f"a prefix speaker must be one of {SPEAKER_TAGS}, got {speaker!r}")
    items = [w if isinstance(w, PrefixWord) else PrefixWord(*w) for w in words]
    items = [PrefixWord(w.text.strip(), w.start, w.end) for w in items if w.text.strip()]
    tokens = [tokenizer.encode(f"{speaker} {w.text}" if i == 0 else w.text) for i, w in enumerate(items)]
    entries, steps, cur = [], [], 0
    for i, (word, toks) in enumerate(zip(items, tokens)):
        start = max(cur + 1, round(word.start * FRAME_RATE))
        end = start + len(toks)
        following = round(items[i + 1].start * FRAME_RATE) if i + 1 < len(items) else round(word.end * FRAME_RATE)
        nxt = max(end + 1, following)
        entries.append(ScriptEntry(word.text, tuple(toks), max(0, nxt - start - 1)))
        steps.append(start - 1)
        cur = end
    return entries, steps


def build_prefix_plan(
    tokenizer: Dia2Tokenizer,
    speaker_1: tuple[Iterable, int] | None,
    speaker_2: tuple[Iterable, int] | None = None,
) -> PrefixPlan | None:
    """Combine the speakers' prefixes; each is (transcript words, Mimi frames of its audio).

    Speaker 1's steps get +3 and speaker 2's are shifted by speaker 1's frame count only, like the
    reference. Speaker 2 alone is an error; no prefix at all gives None.
    """
    if speaker_1 is None:
        if speaker_2 is not None:
            raise GenerationError("a speaker-2 voice prefix needs a speaker-1 prefix too; give speaker 1's first")
        return None
    entries, steps = prefix_speaker_entries(speaker_1[0], "[S1]", tokenizer)
    steps = [s + PREFIX_S1_STEP_OFFSET for s in steps]
    frames = [int(speaker_1[1])]
    if speaker_2 is not None:
        entries2, steps2 = prefix_speaker_entries(speaker_2[0], "[S2]", tokenizer)
        entries += entries2
        steps += [s + frames[0] for s in steps2]
        frames.append(int(speaker_2[1]))
    return PrefixPlan(tuple(entries), tuple(steps), tuple(frames))


# --------------------------------------------------------------------------------------------
# Output crop and word timestamps (spec 4.6, 5.6)
# --------------------------------------------------------------------------------------------


def output_crop(
    start_step: int,
    first_main_new_word_step: int | None = None,
    initial_padding: int = 2,
    include_prefix: bool = False,
) -> int:
    """Leading aligned frames the reference drops: 0 with the prefix audio included, else the
    first word frame: (first step whose *main* text token is new_word) - initial_padding, which
    never happens with a second stream (k > 0), so it falls back to the first loop step.
    The caller applies no crop when it reaches the output length. (k = 0 is not in the fixtures.)
    """
    if include_prefix:
        return 0
    if first_main_new_word_step is None:
        return start_step
    return first_main_new_word_step - initial_padding


def word_timestamps(
    transcript: Iterable, crop: int, skip_words: int = 0, frame_rate: float = FRAME_RATE
) -> list[tuple[str, float]]:
    """(word, seconds) for each word of the transcript: (step - crop) / frame_rate.

    `transcript` holds (word, step) pairs or objects with `text` and `step` (the state machine's
    WordStart). The first `skip_words` entries (the prefix's own words when the prefix audio is
    cropped away) and words before the crop are left out. Steps are word triggers, so times are
    quantised to 80 ms and about one frame early, exactly like the reference.
    """
    out = []
    for i, item in enumerate(transcript):
        word, step = (item.text, item.step) if hasattr(item, "step") else item
        if i < skip_words or step - crop < 0:
            continue
        out.append((word, (step - crop) / frame_rate))
    return out


def builtin_tokenizer() -> Dia2Tokenizer:
    """A byte-level tokenizer for the random presets (no merges: every byte is a token), with the
    speaker and non-verbal tags as added tokens, so presets run with no files at all."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    specials = ["<|endoftext|>", "<|bos|>", "<|new_word|>", "<|pad|>", "<|s4|>", "<|s5|>", "<|s6|>", "<|zero|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(t, normalized=False) for t in ("[S1]", "[S2]", "(laughs)", "(coughs)", "(sighs)")])
    return Dia2Tokenizer(tok)
