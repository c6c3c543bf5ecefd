"""Live text checked on the caller's thread, before the scheduler's step parses it.

A Dia2 member's script state parses its live text inside the batched step (`Dia2SlotBatch._ready`);
text that cannot be spoken (`[S1][S2]`, or a session that ends with no words) would raise there, in
the middle of everyone's step. `CheckedLiveText` runs the same incremental parser over the same
pieces when they arrive: a piece is handed on only once it parses, and the end only once the whole
script is valid. The parser is deterministic, so the step's own parse of exactly those pieces
cannot fail, and a bad session fails alone, on its own thread, with its own message.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..dia2.slots import LiveText
from ..dia2.text import ScriptParser
from ..errors import ScriptError
from ..text import MAX_SCRIPT_BYTES


@dataclass
class CheckedLiveText(LiveText):
    """A `LiveText` whose `push` and `end` raise ScriptError for text that the step would refuse.

    Attributes:
        parser: the shadow parser (a `ScriptParser` like the one in the member's text state).
        size: UTF-8 bytes accepted so far (the usage's input tokens).
        refused: the first refusal; the session is over after one.
    """

    parser: ScriptParser | None = None
    size: int = 0
    refused: ScriptError | None = None

    def push(self, text: str) -> None:
        self._open()
        if not isinstance(text, str):
            raise ScriptError(f"text pieces must be strings, got {type(text).__name__}")
        size = self.size + len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_SCRIPT_BYTES:
            self._refuse(ScriptError(f"the live script passed {MAX_SCRIPT_BYTES} bytes, the limit of one script"))
        self._check(self.parser.feed, text)
        self.size = size
        super().push(text)

    def end(self) -> None:
        if self.ended:
            return
        self._open()
        self._check(self.parser.finish)
        super().end()

    def _open(self) -> None:
        if self.refused is not None:
            raise ScriptError(f"this live script was already refused: {self.refused}")
        if self.ended:
            raise ScriptError("the live script was already ended; start a new one to say more")

    def _check(self, fn, *args) -> None:
        try:
            fn(*args)
        except ScriptError as exc:
            self._refuse(exc)

    def _refuse(self, exc: ScriptError) -> None:
        self.refused = exc
        raise exc


def checked_live_text(tts) -> CheckedLiveText:
    """A CheckedLiveText for a loaded Dia2 model (its tokenizer and text ids, as the step uses)."""
    return CheckedLiveText(parser=ScriptParser(tts.tokenizer, tts._generator.ids))
