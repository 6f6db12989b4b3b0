"""Tool intent under ``tool_choice: auto``: prose that tries to use a tool is a failed call.

Small models often answer "You can use the `get_stock_price` function ..." or print a Python
``def send_email(...)`` block instead of calling the tool. Under ``auto`` such prose would
be accepted as the final answer; with ``--auto-intent on`` (the default) it is treated as a
failed call and retried like one.

The signals are deliberately narrow, so that honest prose stays prose:

* an offered tool written as a function: ``get_weather(`` (this covers ``def get_weather(``
  and ``tools.get_weather(``);
* an offered tool in backticks: `` `get_weather` ``;
* a code block that uses an offered tool's name as an identifier;
* call-shaped JSON naming the tool (``"name": "get_weather"``) that did not parse as a call.

Never a signal: a plain mention (``the get_weather tool``), a tool the user's own last
message names (they asked *about* it), and anything once the conversation has a tool result
after the last user message (the model then writes its final answer).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from itertools import compress
from typing import Any

from forge_core.guardrails.linestart import LineStart
from forge_core.guardrails.rescue import strip_think

# The lookbehind makes a search try only word starts: linear, where ``\w+\Z`` retried every
# position of every word.
_TRAILING_WORD = re.compile(r"(?<!\w)\w+\Z")
_WORD_CHARS = re.compile(r"\w*")
_FENCE = LineStart(r"[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.S)
_LEADING_FENCE = re.compile(r"\s*```")
_FENCE_OPEN = re.compile(r"[ \t]*```[^\n]*\n")
_FENCE_CLOSE = LineStart(r"[ \t]*```")
_FENCE_CLOSE_IN = re.compile(r"\n[ \t]*```")
_CLOSE_HEAD = re.compile(r"[ \t]*`{0,2}")


def applies(messages: Sequence[Any]) -> bool:
    """Is the model still to act, i.e. has no tool result come since the last user message?"""
    for message in reversed(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("tool", "function"):
            return False
        if role == "user":
            return not _has_tool_result(message.get("content"))
    return True


def _has_tool_result(content: Any) -> bool:
    """An Anthropic-style user turn carrying tool results (content parts of that type)."""
    return isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type") == "tool_result" for part in content
    )


def asked_about(messages: Sequence[Any], names: Iterable[str]) -> frozenset[str]:
    """The tool names the last user message mentions itself."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = _text(message.get("content"))
            return frozenset(name for name in names if _word(name).search(text))
    return frozenset()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "") for part in content if isinstance(part, dict)
        )
    return ""


# "Not preceded by a word character" is checked after the name (``name(?<!\wname)``): a
# pattern that starts with a literal lets the regex engine skip ahead to candidates, several
# times faster on a long answer.
@functools.lru_cache(maxsize=512)  # re's own cache still pays the escaping and formatting
def _word(name: str) -> re.Pattern[str]:
    escaped = re.escape(name)
    return re.compile(rf"{escaped}(?<![\w]{escaped})(?![\w])")


def _signal_parts(name: str) -> tuple[str, ...]:
    escaped = re.escape(name)
    return (
        rf"{escaped}(?<![\w]{escaped})[ \t]*\(",  # written as a function (def/calls/methods)
        rf"`[ \t]*{escaped}[ \t]*(?:`|\()",  # in backticks
        rf'"(?:name|tool|tool_name|function)"\s*:\s*"{escaped}"',  # call-shaped JSON
    )


# The character each signal cannot do without, in _signal_parts' order: a text without it
# skips that scan (a plain-string search, much faster than the pattern's).
_SIGNAL_NEEDS = ("(", "`", '"')


@functools.lru_cache(maxsize=512)
def _signal_scans(name: str) -> tuple[re.Pattern[str], ...]:
    """The signals for ``name``, one pattern each: each starts with a literal the regex
    engine skips ahead to (one alternation of them tried every position of a long text)."""
    return tuple(map(re.compile, _signal_parts(name)))


def find_intent(text: str, names: Iterable[str], asked: Iterable[str] = ()) -> str | None:
    """The offered tool ``text`` clearly tries to use, or None."""
    text = strip_think(text)
    candidates = sorted(set(names) - set(asked), key=len, reverse=True)
    if not candidates or not text.strip():
        return None
    present = [need in text for need in _SIGNAL_NEEDS]
    for name in candidates:
        if any(pattern.search(text) for pattern in compress(_signal_scans(name), present)):
            return name
    blocks = [match.group(1) for match in _FENCE.finditer(text)]
    for name in candidates:
        pattern = _word(name)
        if any(pattern.search(block) for block in blocks):
            return name
    return None


PLAIN_SCAN = 4096
"""How far ahead one look for plain whole lines reaches (bounded: a risky spot far ahead must
not make every line start rescan up to it)."""


class IntentGate:
    """Holds back streamed prose that may turn out to be tool intent, until it is known not to.

    Text is released as it comes, except from the first risky spot of a line on: a backtick,
    an offered tool's name, or a trailing word that may still grow into one; that part waits
    until the line is complete. A fenced code block waits until it closes. A line or block
    with a signal keeps everything from there on held until the end, where the engine judges
    it. The split does not depend on how the text is chunked, so a stream and a non-streamed
    answer split alike, and a retried answer never showed its intent text first.

    Cost is linear in the text however it is chunked: a line's released part is kept as
    pieces (only its last few characters are rescanned), a line stuck at a backtick or a name
    parks what arrives until a newline, and a hit parks everything.
    """

    __slots__ = (
        "_names", "_patterns", "_name_at", "_longest", "_buffer", "_at", "_parked", "_hit",
        "_line", "_line_size", "_line_tail", "_line_blank",
        "_seen", "_tick", "_named", "_word", "_close_from", "_fence_open", "_fence_head",
    )

    def __init__(self, names: Iterable[str], asked: Iterable[str] = ()) -> None:
        self._names = tuple(sorted(set(names) - set(asked), key=len, reverse=True))
        self._patterns = [pattern for name in self._names for pattern in _signal_scans(name)]
        alternatives = "|".join(re.escape(name) for name in self._names)
        self._name_at = re.compile(rf"(?<![\w])(?:{alternatives})") if self._names else None
        self._longest = max((len(name) for name in self._names), default=0)
        self._buffer = ""
        self._at = 0  # where the unreleased text starts in _buffer (sliced off once per feed)
        self._parked: list[str] = []  # unreleased text after _buffer, not looked at yet
        self._hit = False
        self._new_line()

    def _new_line(self) -> None:
        self._line: list[str] = []  # the released part of the current line, in pieces
        self._line_size = 0
        self._line_tail = ""  # its last _longest + 1 characters (what a rescan needs)
        self._line_blank = True
        # What _risk already scanned of the current line (which only grows until it ends).
        self._seen = 0
        self._tick = -1
        self._named = -1
        self._word = -1  # where the scanned part's trailing word starts
        self._close_from = 0  # where an open fence's closing search resumes (from _at)
        self._fence_open = False
        self._fence_head: str | None = ""  # an open fence's last line, while it may close it

    @property
    def holding(self) -> bool:
        return len(self._buffer) > self._at or bool(self._parked)

    def _stuck(self) -> bool:
        """Nothing more of this line can be released before it ends (a backtick or a name)."""
        return self._seen > 0 and (self._tick != -1 or self._named != -1)

    def feed(self, text: str) -> str:
        if not self._names:
            return text
        if self._hit or (self._stuck() and "\n" not in text) or self._fence_waits(text):
            self._parked.append(text)
            return ""
        self._buffer = self._buffer[self._at :] + "".join(self._parked) + text
        self._at = 0
        self._parked.clear()
        out: list[str] = []
        while len(self._buffer) > self._at and not self._hit:
            piece = self._next_piece()
            if not piece:
                break
            out.append(piece)
        self._buffer, self._at = self._buffer[self._at :], 0
        return "".join(out)

    def _fence_waits(self, text: str) -> bool:
        """Whether ``text`` leaves an open fence open (then it waits unseen)."""
        if not self._fence_open:
            return False
        head = self._fence_head
        if (head is not None and _FENCE_CLOSE.match(head + text)) or _FENCE_CLOSE_IN.search(text):
            return False
        newline = text.rfind("\n")
        last = text[newline + 1 :] if newline != -1 else None if head is None else head + text
        self._fence_head = last if last is not None and _CLOSE_HEAD.fullmatch(last) else None
        return True

    def _held(self) -> str:
        return self._buffer[self._at :] + "".join(self._parked)

    def drain(self) -> str:
        """At the end of the answer: the held text if it shows no intent after all, else ""."""
        held = self._held()
        if self._hit or (held and find_intent("".join(self._line) + held, self._names)):
            self._hit = True
            return ""
        return self.flush()

    def flush(self) -> str:
        held = self._held()
        self._buffer, self._at, self._parked = "", 0, []
        self._new_line()
        return held

    def _next_piece(self) -> str:
        """Release the next safe piece of the buffer ("" when it must wait)."""
        if self._line_size == 0 and self._seen == 0:
            plain = self._plain_lines()
            if plain:
                return self._take(plain, line_done=True)
        buffer, at = self._buffer, self._at
        newline = buffer.find("\n", at)
        first_line = buffer[at:] if newline == -1 else buffer[at : newline + 1]
        # The released part never holds a backtick, so a line that is a fence has released
        # at most blanks.
        if self._line_blank and _LEADING_FENCE.match(first_line):
            self._seen = 0  # a fence to its end: not a line a backtick got stuck
            fence = self._fence(newline)
            if fence is None:
                return ""  # the block is still open
            body_start, body_end, end = fence
            block, body = buffer[at:end], buffer[body_start:body_end]
            if self._signal(block) or any(_word(n).search(body) for n in self._names):
                self._hit = True
                return ""
            return self._take(len(block), line_done=True)
        if newline != -1:
            if self._signal("".join(self._line) + first_line):
                # Release what a stream would have released before the risky spot arrived.
                self._hit = True
                cut = self._risk(first_line) - self._line_size
                return self._take(cut, line_done=False) if cut > 0 else ""
            return self._take(len(first_line), line_done=True)
        cut = self._risk(first_line) - self._line_size
        return self._take(cut, line_done=False) if cut > 0 else ""

    def _plain_lines(self) -> int:
        """At a line start: the length of the whole lines ahead, in the next ``PLAIN_SCAN``
        characters, before any backtick or offered name. None of them can hold a signal, so
        they go out at once: line by line, a flood of short lines cost microseconds each."""
        buffer, at = self._buffer, self._at
        end = min(len(buffer), at + PLAIN_SCAN)
        tick = buffer.find("`", at, end)
        end = end if tick == -1 else tick
        assert self._name_at is not None
        named = self._name_at.search(buffer, at, end)
        end = end if named is None else named.start()
        newline = buffer.rfind("\n", at, end)
        return 0 if newline == -1 else newline + 1 - at

    def _fence(self, newline: int) -> tuple[int, int, int] | None:
        """The fenced block opening at ``_at``: where its body starts and ends and where the
        block ends in ``_buffer`` (None: still open).

        Same match as ``_FENCE`` from ``_at``, but the closing line is searched for only from
        the first line the previous call had not seen complete.
        """
        buffer, at = self._buffer, self._at
        opening = _FENCE_OPEN.match(buffer, at) if newline != -1 else None
        if opening is None:
            return None
        start = max(opening.end(), at + self._close_from)  # always a line start
        close = _FENCE_CLOSE.search(buffer, start)
        if close is None:
            last = buffer.rfind("\n", start)
            line_start = start if last == -1 else last + 1
            self._close_from = line_start - at
            self._fence_open = True
            head = _CLOSE_HEAD.fullmatch(buffer, line_start)
            self._fence_head = None if head is None else head.group()
            return None
        self._close_from = 0
        return opening.end(), close.start(), close.end()

    def _risk(self, pending: str) -> int:
        """Where the first spot that may start a signal begins in the line that goes on with
        ``pending`` after its released part (its length: none).

        The line only grows until it ends: only its new part is scanned, in a window that
        starts with the released part's tail (what a name or word reaching back needs).
        """
        base = self._line_size - len(self._line_tail)  # the window's offset in the line
        window = self._line_tail + pending
        size = base + len(window)
        seen, self._seen = self._seen - base, size
        if self._tick == -1:
            tick = window.find("`", seen)
            self._tick = -1 if tick == -1 else base + tick
        assert self._name_at is not None
        named = self._name_at.search(window, max(0, seen - self._longest + 1))
        if named is not None and (self._named == -1 or base + named.start() < self._named):
            self._named = base + named.start()
        if self._word == -1 or _WORD_CHARS.match(window, seen).end() != len(window):
            word = _TRAILING_WORD.search(window, seen)
            self._word = -1 if word is None else base + word.start()
        spots = [size] + [spot for spot in (self._tick, self._named) if spot != -1]
        start = self._word - base  # (a word longer than any name is no name's prefix)
        near = self._word != -1 and len(window) - start <= self._longest
        if near and (start == 0 and base == 0 or not window[start - 1].isalnum()):
            tail = window[start:]
            if any(name.startswith(tail) for name in self._names):
                spots.append(self._word)
        return max(min(spots), self._line_size)

    def _signal(self, text: str) -> bool:
        return any(pattern.search(text) for pattern in self._patterns)

    def _take(self, size: int, *, line_done: bool) -> str:
        piece = self._buffer[self._at : self._at + size]
        self._at += size
        if line_done:
            self._new_line()
        else:
            self._line.append(piece)
            self._line_size += size
            self._line_tail = (self._line_tail + piece)[-(self._longest + 1) :]
            self._line_blank = self._line_blank and (not piece or piece.isspace())
        return piece


class GatedSplitter:
    """A :class:`~forge_core.guardrails.attempt.Splitter` whose released text also passes an
    :class:`IntentGate` (same interface, so the engine's two paths use it alike)."""

    __slots__ = ("_inner", "_gate")

    def __init__(self, inner: Any, gate: IntentGate) -> None:
        self._inner = inner
        self._gate = gate

    @property
    def holding(self) -> bool:
        return self._inner.holding or self._gate.holding

    def feed(self, text: str) -> str:
        return self._gate.feed(self._inner.feed(text))

    def drain(self) -> str:
        """At the end of the answer: what the gate held, if it showed no intent after all."""
        return self._gate.drain()

    def flush(self) -> str:
        # The gate's text comes first: the inner splitter holds what followed it.
        return self._gate.flush() + self._inner.flush()
