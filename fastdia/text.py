"""Dialogue scripts: validation and the byte tokenizer (spec section 3).

A script is plain text with speaker tags `[S1]`/`[S2]` and parenthesised non-verbal sounds such as
`(laughs)`. Tokens are the UTF-8 bytes with `[S1]` -> 1 and `[S2]` -> 2; 0 is padding.
"""

from __future__ import annotations

import re
import warnings

MAX_TEXT_TOKENS = 1024  # the encoder's trained positions; the original silently truncates here

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


def validate_script(text: str, what: str = "script") -> None:
    """Raise ScriptError with a fix-it message if `text` cannot be spoken; warn on odd tags.

    Checks: a string, not empty, starts with [S1] or [S2], no other bracket tags such as [S3],
    and at most MAX_TEXT_TOKENS tokens once tags are replaced.
    """
    from .errors import ScriptError

    if not isinstance(text, str):
        raise ScriptError(f"the {what} must be a string, got {type(text).__name__}")
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
    n = len(tokenize(text))
    if n > MAX_TEXT_TOKENS:
        raise ScriptError(
            f"the {what} is {n} tokens (UTF-8 bytes, a speaker tag counts as one) but Dia reads at most "
            f"{MAX_TEXT_TOKENS}; shorten it or split it into several generations (about 5-20 s of speech each works best)"
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


def tokenize(text: str) -> list[int]:
    """UTF-8 bytes with [S1] -> 1 and [S2] -> 2 (replaced in that order, like the original)."""
    data = text.encode("utf-8")
    for tag, token in SPEAKER_TAGS.items():
        data = data.replace(tag.encode("ascii"), bytes([token]))
    return list(data)
