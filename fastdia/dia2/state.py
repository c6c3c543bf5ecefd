"""Dia2 per-row action/new-word state machine (spec `dia2.md` 4.3-4.5, 5.4 step 8, 6 step 7).

At each step t the model samples a 2-way action (0 = pad, 1 = new word). The state machine applies
the reference's constraints to it, feeds the script's text tokens, and returns the (main, second)
text tokens that are the text input of step t+1. It also records the step at which each word
starts (for timestamps) and the end of speech (the first new word that finds no entries left).

One `Dia2TextState` per batch row; it is driven one step at a time:

    state = Dia2TextState(ids, second_stream_ahead=k, entries=parse_script(script, tok))
    # (voice prefix: prefix_entries=plan.entries, then state.force(t, plan.forced_new_word(t))
    #  for t in 0..P0-1, and the loop starts at step P0-1)
    out = state.step(t, action)         # out.main / out.second feed step t+1

Streaming text: create it with a tokenizer (or no entries), `append_text()` pieces as they
arrive and `end_input()` at the end. A step that would need words not yet received raises
`TextStarvedError` without changing any state (append more text and call again), so with the
whole text given up front the outputs are exactly the reference's.

Config notes (fixtures and spec agree): `max_padding` is 6, not the config's `max_pad` (8 in 2B);
`first_word_min_start` is not read: the first word cannot start before `initial_padding` (2), so
its first token is fed at position >= 3.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from .text import Dia2TextIds, Dia2Tokenizer, ScriptEntry, ScriptParser

MAX_PADDING = 6  # hard-coded in the reference runtime
INITIAL_PADDING = 2  # GenerationConfig.initial_padding default

ACTION_PAD = 0
ACTION_NEW_WORD = 1


class TextStarvedError(RuntimeError):
    """The step needs script words that have not been appended yet (streaming input)."""


@dataclass(frozen=True)
class WordStart:
    """A word of the transcript: it was triggered (its new-word action taken) at `step`; its first
    text token is fed at step + 1. `entry` counts entries (pauses included) from 0, prefix first."""

    text: str
    step: int
    entry: int
    is_prefix: bool = False


@dataclass(frozen=True)
class StepOutput:
    """What the state machine made of step t.

    Attributes:
        step: t.
        main, second: the text tokens fed at step t+1 (channels 0 and 1).
        new_word: the action actually used after the constraints (a new word consumed an entry,
            or the end-of-script new word); False for pad, including a consumed pause.
        action_free: the sampled action decided the step (no pending tokens, no forced padding,
            padding budget left, end not reached before t); always False for warm-up steps.
        word: the word that started at t, if any.
        end_of_speech: t is the end step (the first new word with no entries left).
    """

    step: int
    main: int
    second: int
    new_word: bool
    action_free: bool
    word: WordStart | None = None
    end_of_speech: bool = False


class Dia2TextState:
    """Explicit per-row state: entries queue, pending and look-ahead tokens, padding counters.

    Args:
        ids: runtime text ids (only pad and new_word are used here).
        second_stream_ahead: k, the config's `data.second_stream_ahead` (0 disables the second
            stream; the main token is then duplicated into it).
        initial_padding: forced pad steps at the start (also the initial padding budget).
        max_padding: pad steps allowed after a word starts before a new word is forced.
        entries: script entries known now (e.g. `parse_script(...)`).
        prefix_entries: voice-prefix entries, consumed before the script (spec 6).
        tokenizer: needed for `append_text` (streaming script text).
        input_complete: whether `entries` is the whole script (as if `end_input()` were called);
            default: True without a tokenizer, False with one (streaming).
    """

    def __init__(
        self,
        ids: Dia2TextIds,
        *,
        second_stream_ahead: int,
        initial_padding: int = INITIAL_PADDING,
        max_padding: int = MAX_PADDING,
        entries: Iterable[ScriptEntry] = (),
        prefix_entries: Iterable[ScriptEntry] = (),
        tokenizer: Dia2Tokenizer | None = None,
        input_complete: bool | None = None,
    ):
        if second_stream_ahead < 0 or initial_padding < 0 or max_padding < 0:
            raise ValueError("second_stream_ahead, initial_padding and max_padding must be >= 0")
        self.ids = ids
        self.lookahead_words = int(second_stream_ahead)
        self.max_padding = int(max_padding)
        self.initial_padding = int(initial_padding)
        prefix = list(prefix_entries)
        entries = list(entries)
        if entries and tokenizer is not None:
            # The parser's first-word [S1] rule would apply again to the streamed text.
            raise ValueError("give the script either as parsed entries or as text (tokenizer=...), not both")
        self.num_prefix_entries = len(prefix)
        self._entries: deque[ScriptEntry] = deque(prefix + entries)
        self._popped = 0  # entries consumed so far (index of the next one)
        self._parser = ScriptParser(tokenizer, ids) if tokenizer is not None else None
        if input_complete is None:
            input_complete = tokenizer is None
        self._input_ended = bool(input_complete)
        self.pending: deque[int] = deque()
        self.lookahead: deque[int] = deque()
        self.padding_budget = self.initial_padding
        self.forced_padding = self.initial_padding
        self.end_step: int | None = None
        self.transcript: list[WordStart] = []
        self.first_main_new_word_step: int | None = None  # loop steps only (spec 5.6, k = 0)

    # ---- input -------------------------------------------------------------------------------

    def append_text(self, text: str) -> int:
        """Parse more script text (any split); returns how many entries became available."""
        if self._parser is None:
            raise ValueError("append_text needs the state to be created with tokenizer=...")
        self._check_open()
        new = self._parser.feed(text)
        self._entries.extend(new)
        return len(new)

    def append_entries(self, entries: Iterable[ScriptEntry]) -> None:
        """Add already parsed entries (the caller's parser handles the first-word [S1] rule)."""
        self._check_open()
        self._entries.extend(entries)

    def end_input(self) -> None:
        """No more script: the end of speech can now be decided. Idempotent."""
        if self._input_ended:
            return
        if self._parser is not None:
            self._entries.extend(self._parser.finish())
        self._input_ended = True

    def _check_open(self) -> None:
        if self._input_ended:
            raise ValueError("the script input was already ended")

    @property
    def input_ended(self) -> bool:
        return self._input_ended

    @property
    def entries_left(self) -> int:
        return len(self._entries)

    @property
    def needs_text(self) -> bool:
        """A new word at the next step could not be resolved with the text received so far."""
        return not self._input_ended and not self._resolvable()

    @property
    def finished(self) -> bool:
        """The end of speech has been reached."""
        return self.end_step is not None

    # ---- stepping ----------------------------------------------------------------------------

    def step(self, t: int, action: int) -> StepOutput:
        """Process the action sampled at loop step t (1 = new word, anything else = pad)."""
        out = self._process(t, int(action) == ACTION_NEW_WORD, forced=False)
        if out.main == self.ids.new_word and self.first_main_new_word_step is None:
            self.first_main_new_word_step = t
        return out

    def force(self, t: int, new_word: bool) -> StepOutput:
        """A warm-up step of a voice prefix: the action is imposed, bypassing the forced padding
        and the padding budget (pending tokens still force pad)."""
        return self._process(t, bool(new_word), forced=True)

    def _process(self, t: int, want_new_word: bool, forced: bool) -> StepOutput:
        # Constraints, in the reference's order.
        free = False
        if self.pending:
            new_word = False
        elif forced:
            new_word = want_new_word
        elif self.forced_padding > 0:
            new_word = False
        elif self.padding_budget <= 0 and not want_new_word:
            new_word = True
        else:
            new_word = want_new_word
            # As the fixtures' `action_free`: a new word sampled with the budget spent counts
            # as forced (it would have been imposed anyway).
            free = self.end_step is None and self.padding_budget > 0
        if new_word and not self._input_ended and not self._resolvable():
            raise TextStarvedError(
                f"step {t} starts a new word but the next words of the script have not arrived; "
                "append more text (or end the input) and process this step again"
            )

        word = None
        end_now = False
        if new_word:
            if self._entries:
                entry = self._entries.popleft()
                index = self._popped
                self._popped += 1
                if entry.tokens:
                    word = WordStart(entry.text, t, index, index < self.num_prefix_entries)
                    self.transcript.append(word)
                    self.pending.extend(entry.tokens)
                    if self.lookahead_words > 0:
                        ahead = self._word_ahead(self.lookahead_words)
                        if ahead is not None:
                            self.lookahead.extend(ahead.tokens)
                    self.padding_budget = self.max_padding
                else:
                    new_word = False  # a pause: consumed, then padded
                self.forced_padding = entry.padding
            elif self.end_step is None:
                # End of script. With a second stream the new word still goes out, once.
                self.end_step = t
                end_now = True
                new_word = self.lookahead_words > 0
            else:
                new_word = False

        pad, nw = self.ids.pad, self.ids.new_word
        if new_word:
            token = nw
        else:
            self.padding_budget = max(0, self.padding_budget - 1)
            self.forced_padding = max(0, self.forced_padding - 1)
            token = self.pending.popleft() if self.pending else pad

        if self.lookahead_words == 0:
            main = second = token
        elif token == nw:
            main = self.pending.popleft() if self.pending else pad
            second = nw
        else:
            main = token
            second = self.lookahead.popleft() if self.lookahead else pad
        return StepOutput(t, main, second, new_word, free, word, end_now)

    def _word_ahead(self, k: int) -> ScriptEntry | None:
        """The k-th entry with tokens among those left (pauses skipped), if any."""
        for entry in self._entries:
            if entry.tokens:
                k -= 1
                if k == 0:
                    return entry
        return None

    def _resolvable(self) -> bool:
        """The next entry, and the second-stream word k ahead of it, are known."""
        if not self._entries:
            return False
        if self._entries[0].is_pause or self.lookahead_words == 0:
            return True
        words = 0
        for i, entry in enumerate(self._entries):
            if i > 0 and entry.tokens:
                words += 1
                if words >= self.lookahead_words:
                    return True
        return False
