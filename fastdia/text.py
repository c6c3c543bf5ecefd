"""Dialogue scripts: validation, the byte tokenizer (spec section 3) and the long-script splitter.

A script is plain text with speaker tags `[S1]`/`[S2]` and parenthesised non-verbal sounds such as
`(laughs)`. Tokens are the UTF-8 bytes with `[S1]` -> 1 and `[S2]` -> 2; 0 is padding.
"""

from __future__ import annotations

import re
import unicodedata
import warnings

MAX_TEXT_TOKENS = 1024  # the encoder's trained positions; the original silently truncates here
# Longer scripts are spoken in chunks (split_script); past this it is almost surely a mistake
# (100 KB is about two hours of speech), so it is refused rather than run for hours.
MAX_SCRIPT_BYTES = 100_000
# The default chunk budget, in tokens: about 11 s of speech at Dia's usual pace (~14 bytes/s),
# well below the ~20 s past which users hear Dia speed up.
DEFAULT_CHUNK_TOKENS = 160
BOM = "\ufeff"

SPEAKER_TAGS = {"[S1]": 1, "[S2]": 2}

# The non-verbal tags the Dia README lists; others may produce artifacts.
NONVERBAL_TAGS = frozenset((
    "laughs", "clears throat", "sighs", "gasps", "coughs", "singing", "sings", "mumbles", "beep",
    "groans", "sniffs", "claps", "screams", "inhales", "exhales", "applause", "burps", "humming",
    "sneezes", "chuckle", "whistles",
))

_BRACKET_TAG = re.compile(r"\[[^\[\]\n]{0,32}\]")
_PAREN_TAG = re.compile(r"\(([^()\n]{1,40})\)")


class UnlistedTagWarning(UserWarning):
    """A parenthesised non-verbal tag that Dia was not documented to know."""


def validate_script(text: str, what: str = "script", max_tokens: int = MAX_TEXT_TOKENS) -> str:
    """Raise ScriptError with a fix-it message if `text` cannot be spoken; warn on odd tags.

    Checks: a string of valid Unicode (no lone surrogates) without control characters other
    than tab and newlines, not empty, starts with [S1] or [S2] (a leading byte-order mark is
    dropped), no other bracket tags such as [S3], and at most `max_tokens` tokens once tags are
    replaced (MAX_TEXT_TOKENS for what one generation reads; MAX_SCRIPT_BYTES for a script that
    may be split into chunks).

    Returns:
        The script without a leading byte-order mark (what to tokenize).
    """
    from .errors import ScriptError

    if not isinstance(text, str):
        raise ScriptError(f"the {what} must be a string, got {type(text).__name__}")
    text = text.removeprefix(BOM)
    _check_characters(text, what)
    stripped = text.strip()
    if not stripped:
        raise ScriptError(f"the {what} is empty; write dialogue such as \"[S1] Hello there. [S2] Hi!\"")
    for match in _BRACKET_TAG.finditer(stripped):
        if match.group(0) not in SPEAKER_TAGS:
            raise ScriptError(
                f"unknown tag {match.group(0)} at character {match.start()} of the {what}: "
                "the only speaker tags are [S1] and [S2]; put non-verbal sounds in parentheses, e.g. (laughs)"
            )
    if not stripped.startswith(tuple(SPEAKER_TAGS)):
        raise ScriptError(
            f"the {what} must start with a speaker tag [S1] or [S2], e.g. \"[S1] {stripped[:40]}\""
        )
    if not _TURN.sub("", stripped).strip():
        # Tags alone leave no words: the long-script planner would have no chunk to speak.
        raise ScriptError(
            f"the {what} has speaker tags but nothing to say; write words after them, e.g. \"[S1] Hello there.\""
        )
    n = len(tokenize(text))
    if n > max_tokens:
        if max_tokens >= MAX_SCRIPT_BYTES:
            raise ScriptError(
                f"the {what} is {n} tokens (UTF-8 bytes, a speaker tag counts as one); fastdia speaks scripts "
                f"of up to {MAX_SCRIPT_BYTES} (about two hours) in one call: split it into several files"
            )
        raise ScriptError(
            f"the {what} is {n} tokens (UTF-8 bytes, a speaker tag counts as one) but Dia reads at most "
            f"{max_tokens}; shorten it or split it into several generations (about 5-20 s of speech each works best)"
        )
    for match in _PAREN_TAG.finditer(stripped):
        tag = match.group(1).strip().lower()
        if tag not in NONVERBAL_TAGS and len(tag.split()) <= 3:
            warnings.warn(
                f"non-verbal tag ({match.group(1)}) is not one Dia is documented to know and may cause "
                f"artifacts; known tags: {', '.join(sorted(NONVERBAL_TAGS))}",
                UnlistedTagWarning,
                stacklevel=3,
            )
    return text


def _check_characters(text: str, what: str) -> None:
    """Refuse what would silently become other tokens or crash the byte encoding.

    Raw bytes 0x01/0x02 *are* the speaker tokens and other control characters have no speech,
    so they are refused (not stripped: the user should see that the text is not what they
    think); a lone surrogate (e.g. half an emoji from a bad decode) cannot be encoded at all.
    """
    from .errors import ScriptError

    for i, ch in enumerate(text):
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            raise ScriptError(
                f"the {what} has an invalid character at position {i}: a lone surrogate U+{code:04X} "
                "(half of a character, usually from a broken decode); fix the text's encoding"
            )
        if ch not in "\n\r\t" and unicodedata.category(ch) == "Cc":
            raise ScriptError(
                f"the {what} has a control character U+{code:04X} at position {i}; remove it "
                "(control characters are refused, not stripped: 0x01/0x02 would silently become speaker tags)"
            )


def tokenize(text: str) -> list[int]:
    """UTF-8 bytes with [S1] -> 1 and [S2] -> 2 (replaced in that order, like the original)."""
    data = text.removeprefix(BOM).encode("utf-8")
    for tag, token in SPEAKER_TAGS.items():
        data = data.replace(tag.encode("ascii"), bytes([token]))
    return list(data)


# --------------------------------------------------------------------------------------------
# Long scripts
# --------------------------------------------------------------------------------------------

_TURN = re.compile(r"\[S[12]\]")
# A sentence ends at . ! ? or an ellipsis (with closing quotes/brackets), then whitespace.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?\u2026])|(?<=[.!?\u2026][\"'\u201d\u2019)\]]))\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")


class LongSentenceWarning(UserWarning):
    """A sentence longer than the chunk budget had to be spoken as one chunk (or cut at words)."""


def script_turns(text: str) -> list[str]:
    """The speaker turns of a validated script, each starting with its tag, whitespace-trimmed."""
    text = text.removeprefix(BOM).strip()
    starts = [m.start() for m in _TURN.finditer(text)]
    ends = starts[1:] + [len(text)]
    turns = [text[a:b].strip() for a, b in zip(starts, ends)]
    return [t for t in turns if t[4:].strip()]  # a tag with nothing after it says nothing


def retag(transcript: str, speaker: str, name: str = "voice") -> str:
    """A one-speaker transcript made to speak as `speaker` ("[S1]" or "[S2]"): its tags replaced.

    A saved voice is usually recorded as [S1]; given for S2 its transcript must say [S2], or the
    model would hear the prompt's voice as the other speaker.
    """
    from .errors import ScriptError

    tags = set(_TURN.findall(transcript))
    if len(tags) > 1:
        raise ScriptError(
            f"{name} has both speakers in its transcript; give it for the whole script (voice={name!r}), "
            "not for one speaker"
        )
    return _TURN.sub(speaker, transcript)


def split_script(text: str, max_tokens: int = DEFAULT_CHUNK_TOKENS) -> list[str]:
    """Split a script into chunks that each start with a speaker tag and fit `max_tokens`.

    Whole turns are packed greedily; a turn that alone exceeds the budget is split at sentence
    ends (each piece keeps its speaker's tag). A sentence longer than the budget stays whole
    (with a LongSentenceWarning) unless it exceeds MAX_TEXT_TOKENS // 2, the most one
    generation can speak with its context; then it is cut at clause ends, then at spaces.

    Guarantees: every chunk starts with [S1] or [S2]; joining the chunks (less the repeated
    tags of a split turn) gives the script's words in order, none lost or duplicated; no chunk
    exceeds `max_tokens` unless one sentence does.

    Args:
        text: a script (validated with `validate_script(text, max_tokens=MAX_SCRIPT_BYTES)`).
        max_tokens: the chunk budget in tokens (UTF-8 bytes; a speaker tag is one).

    Returns:
        The chunks, in order (one chunk for a script within the budget).
    """
    from .errors import ScriptError

    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 16 <= max_tokens <= MAX_TEXT_TOKENS:
        raise ScriptError(f"the chunk budget must be an integer in 16..{MAX_TEXT_TOKENS} tokens, got {max_tokens!r}")
    size = _size
    chunks: list[str] = []
    for turn in script_turns(text):
        pieces = [turn] if size(turn) <= max_tokens else _split_turn(turn, max_tokens)
        for piece in pieces:
            if chunks and size(chunks[-1]) + 1 + size(piece) <= max_tokens:
                chunks[-1] = chunks[-1] + " " + piece
            else:
                chunks.append(piece)
    return chunks


def _size(text: str) -> int:
    return len(tokenize(text))


def _split_turn(turn: str, budget: int) -> list[str]:
    """One over-long turn -> pieces within `budget`, each with the turn's tag."""
    tag, body = turn[:4], turn[4:].strip()
    hard = MAX_TEXT_TOKENS // 2  # a generation's text also holds its context's transcript
    units: list[str] = []
    for sentence in _SENTENCE_END.split(body):
        if not sentence:
            continue
        if _size(tag + " " + sentence) <= budget:
            units.append(sentence)
            continue
        limit = min(hard, max(budget, _size(tag + " " + sentence)))
        if _size(tag + " " + sentence) <= hard:
            warnings.warn(
                f"a sentence of {_size(sentence)} bytes is longer than the chunk budget ({budget}); it is spoken "
                f"as one chunk: {sentence[:60]!r}...",
                LongSentenceWarning,
                stacklevel=4,
            )
            units.append(sentence)
            continue
        warnings.warn(
            f"a sentence of {_size(sentence)} bytes is too long for one generation; it is cut at commas "
            f"and spaces: {sentence[:60]!r}...",
            LongSentenceWarning,
            stacklevel=4,
        )
        for part in _cut(sentence, min(limit, budget) - 5):
            if _size(tag + " " + part) > hard:
                from .errors import ScriptError

                raise ScriptError(
                    f"the script has a run of {_size(part)} bytes with no space or punctuation ({part[:40]!r}...); "
                    f"Dia cannot speak it in one generation (at most {hard} bytes): add spaces or sentence ends"
                )
            units.append(part)
    pieces: list[str] = []
    for unit in units:
        if pieces and _size(pieces[-1]) + 1 + _size(unit) <= budget:
            pieces[-1] = pieces[-1] + " " + unit
        else:
            pieces.append(tag + " " + unit)
    return pieces


def _cut(sentence: str, budget: int) -> list[str]:
    """A sentence -> parts of at most `budget` bytes, at clause ends where possible, else spaces."""
    parts: list[str] = []
    for clause in _CLAUSE_END.split(sentence):
        for word in clause.split() if _size(clause) > budget else [clause]:
            if parts and _size(parts[-1]) + 1 + _size(word) <= budget:
                parts[-1] = parts[-1] + " " + word
            else:
                parts.append(word)
    return parts
