"""The streaming hold-back scanner: prose goes out at once, only a possible printed call waits.

Rules, in the order they apply to the text of one answer:

* A marker (a rescue parser's opening such as ``<tool_call>`` or a code fence) starts holding
  where it starts, anywhere in the text; everything after it is held too.
* ``{`` and ``[`` hold only as the start of a JSON call: ``{`` followed by ``"`` and ``[``
  followed by ``{`` (spaces and newlines may come between), anywhere, mid-line too
  (``Sure: {"name": ...}``). A brace followed by anything else (``a set {1,2}``) is prose and
  is never held; a brace ending a chunk waits for the next chunk's first character.
* Text ending in the beginning of a marker (``"... <tool"``, ``"``"``) is held until the next
  feed shows whether the marker completes.
* Openings that cannot start a call are released as soon as that is visible, without needing
  tool names: inline ```` ```code``` ````, and a fenced code block whose body does not start
  with JSON (the block then streams through as prose until its closing fence).
* :meth:`HoldBack.release_if_resolved` decides complete candidates (a JSON value that closed
  or hit a mismatched bracket, a closed fence, a closed ``<tool_call>``/``<function=>`` tag)
  with the rescue parsers: a call for a known tool keeps everything held until
  :meth:`HoldBack.flush`; anything else is released. A candidate that does not name a known
  tool is released without running the parsers.
* A hold longer than ``max_held`` whose first KiB names no known tool is released, together
  with every later marker whose own first KiB names no known tool (up to the first marker
  that does, or that starts within the last KiB, where that cannot be known yet).

Cost is linear in the text, whatever it contains: input is processed in slices of at most
:data:`SLICE` characters, each hold's scanner sees each character once, a candidate is
decided (and held text rescanned) only from where it ended, and a release at the bound
releases all but at most a KiB of what was scanned.
"""

from __future__ import annotations

import functools
import re
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from forge_core.guardrails.records import RescueParser
from forge_core.guardrails.rescue import BUILTIN_PARSERS, rescue

BRACES = ("{", "[")
FENCE = "```"
CLOSERS = {"<tool_call>": "</tool_call>", "<function=": "</function>"}
"""Tag markers whose format has a closing tag, so a complete candidate can be decided early."""

MAX_INFO = 100
"""A fence opening line longer than this is not a code fence info string."""

SLICE = 1024
"""Input is scanned in slices of this size, so a decision costs at most a slice of copying."""

HEAD = 1024
"""How much of a long hold must name a known tool for it to be kept past ``max_held``."""

MAX_BRACE_GAP = 64
"""Whitespace allowed between ``{`` and ``"`` (or ``[`` and ``{``) of a JSON call opening."""

Step = tuple[str, int, bool]
"""``("release", cut, code)``: release held[:cut] (``code``: it opened a code block);
``("closed", end, False)``: held[:end] is a complete candidate to decide."""


class _BraceScan:
    """Tracks a JSON value from its opening brace: string- and nesting-aware, incremental."""

    _STRUCTURE = re.compile(r'["{}\[\]]')
    _IN_STRING = re.compile(r'["\\]')
    _PAIRS = {"}": "{", "]": "["}

    def __init__(self, opener: str) -> None:
        self.expect = '"' if opener == "{" else "{"
        self.stack = [opener]
        self.started = False
        self.in_string = False
        self.escaped = False

    def feed(self, chunk: str, offset: int) -> Step | None:
        i, n = 0, len(chunk)
        if not self.started:
            while i < n and chunk[i] in " \t\r\n":
                i += 1
            if i == n:
                return None
            if chunk[i] != self.expect:  # "{1,2}", "[link]", "{}": never a call
                return ("release", 1, False)
            self.started = True
        while i < n:
            if self.escaped:
                self.escaped, i = False, i + 1
                continue
            if self.in_string:
                match = self._IN_STRING.search(chunk, i)
                if match is None:
                    return None
                i = match.end()
                if match.group() == "\\":
                    self.escaped = True
                else:
                    self.in_string = False
                continue
            match = self._STRUCTURE.search(chunk, i)
            if match is None:
                return None
            char, i = match.group(), match.end()
            if char == '"':
                self.in_string = True
            elif char in "{[":
                self.stack.append(char)
            elif self.stack.pop() != self._PAIRS[char]:
                # Not JSON; a call may still sit inside it (a broken wrapper): let the
                # parsers decide the candidate as it stands, then scan on after it.
                return ("closed", offset + i, False)
            elif not self.stack:
                return ("closed", offset + i, False)
        return None

    def bound_cut(self, size: int) -> tuple[int, bool]:
        return 1, False


class _FenceScan:
    """A code fence: info line, then a body that must start with JSON or a call tag, then a
    closing fence. Any other body is a code block."""

    _CLOSE = re.compile(r"\n[ \t]*```")

    def __init__(self, tags: Sequence[str]) -> None:
        self.tags = tuple(tags)
        self.longest = max((len(t) for t in self.tags), default=1)
        self.stage = 0  # 0: info string, 1: start of the body, 2: call-like body until the close
        self.info = 0
        self.head = ""  # the body's first characters, while they may still begin a tag
        self.body_at = 0
        self.tail = ""

    def feed(self, chunk: str, offset: int) -> Step | None:
        i = 3 if offset == 0 else 0  # the opening backticks themselves
        n = len(chunk)
        if self.stage == 0:
            newline = chunk.find("\n", i)
            line = chunk[i:] if newline == -1 else chunk[i:newline]
            tick = line.find("`")
            if tick != -1:  # backticks in the info string: inline ```code```, not a fence
                return ("release", offset + i + tick + 1, False)
            self.info += len(line)
            if self.info > MAX_INFO:
                return ("release", offset + n, False)
            if newline == -1:
                return None
            self.stage, i = 1, newline + 1
        if self.stage == 1:
            if not self.head:
                while i < n and chunk[i] in " \t\r\n":
                    i += 1
                if i == n:
                    return None
                self.body_at = offset + i
            self.head = (self.head + chunk[i : i + self.longest])[: self.longest]
            if self.head[0] in "{[" or any(self.head.startswith(t) for t in self.tags):
                self.stage, self.tail = 2, ""
            elif any(t.startswith(self.head) for t in self.tags):
                return None  # "<tool_" so far: wait for more
            else:  # a code block: release it, it streams as prose
                return ("release", self.body_at, True)
        window = self.tail + chunk[i:]
        match = self._CLOSE.search(window)
        if match is not None:
            return ("closed", offset + i - len(self.tail) + match.end(), False)
        self.tail = window[-8:]
        return None

    def bound_cut(self, size: int) -> tuple[int, bool]:
        return size, True


class _TagScan:
    """An explicit call marker; with a known closing tag the candidate closes there.

    A JSON body is tracked first, so a closing tag inside a JSON string (a file's content
    that mentions ``</tool_call>``) does not end the candidate early.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.closer = CLOSERS.get(marker)
        self.stage = "head"  # head: before the body; json: inside a JSON body; search: closer
        self.body: _BraceScan | None = None
        self.tail = ""

    def feed(self, chunk: str, offset: int) -> Step | None:
        if self.closer is None:
            return None
        i = len(self.marker) if offset == 0 else 0
        if self.stage == "head":
            while i < len(chunk) and chunk[i] in " \t\r\n":
                i += 1
            if i == len(chunk):
                return None
            if chunk[i] == "{":
                self.stage, self.body = "json", _BraceScan("{")
                i += 1
            else:
                self.stage = "search"
        if self.stage == "json" and self.body is not None:
            step = self.body.feed(chunk[i:], offset + i)
            if step is None:
                return None
            self.stage = "search"  # the JSON ended (or was not JSON): now look for the tag
            if step[0] == "closed":
                i = step[1] - offset
        window = self.tail + chunk[i:]
        found = window.find(self.closer)
        if found != -1:
            return ("closed", offset + i - len(self.tail) + found + len(self.closer), False)
        self.tail = window[-(len(self.closer) - 1) :]
        return None

    def bound_cut(self, size: int) -> tuple[int, bool]:
        return len(self.marker), False


Scanner = _BraceScan | _FenceScan | _TagScan


def _inline_code_end(text: str, position: int) -> int:
    """For a fence at ``position`` whose info string already shows a backtick (inline
    ```code```, which :class:`_FenceScan` releases at once): where the released part ends;
    else -1."""
    start = position + len(FENCE)
    tick = text.find("`", start)
    if tick == -1 or text.find("\n", start, tick) != -1:
        return -1
    return tick + 1


@dataclass(slots=True)
class _Hold:
    marker: str
    scanner: Scanner | None
    """None for a partial hold (a possible marker beginning at the end of the text)."""
    closed_at: int | None = None
    call: bool = False
    bound_checked: bool = False
    parts: list[str] = field(default_factory=list)
    size: int = 0


class HoldBack:
    """Splits streamed text into what is safe to emit now and what may be a printed tool call.

    ``feed`` returns the safe text; ``release_if_resolved`` returns held text that turned out to
    be prose; ``flush`` returns whatever is still held at the end. Everything returned, in
    order, is exactly the input.
    """

    def __init__(
        self,
        markers: Sequence[str],
        *,
        parsers: Sequence[RescueParser] | None = None,
        max_held: int = 8192,
    ) -> None:
        self._parsers = tuple(parsers) if parsers is not None else BUILTIN_PARSERS
        self._max_held = max_held
        unique = frozenset(m for m in markers if m and m[0] not in "\r\n")
        (
            self._braces, self._tags, self._tag_set, self._pattern, self._brace_partial,
            self._prefixes, self._longest_prefix, self._first_chars,
        ) = _marker_tables(unique)
        self._line_start = True  # the emitted text so far ends at the start of a line
        self._in_code = False  # inside a fenced code block that was released as prose
        self._hold: _Hold | None = None
        self._pending: deque[str] = deque()
        """Input not scanned yet: it waits while a candidate awaits its decision."""

    # --- public ----------------------------------------------------------------------------

    @property
    def held(self) -> str:
        """The text currently held back."""
        return self._joined() + "".join(self._pending)

    @property
    def holding(self) -> bool:
        return (self._hold is not None and self._hold.size > 0) or bool(self._pending)

    def feed(self, text: str) -> str:
        """Take the next piece of the answer; return the text that is safe to emit now."""
        if text:
            self._pending.append(text)
        return self._pump()

    def release_if_resolved(self, tool_names: Collection[str]) -> str:
        """Release held text that can no longer become a call for one of ``tool_names``."""
        names = self._names_pattern(frozenset(tool_names))
        out: list[str] = []
        while True:
            out.append(self._pump())
            hold = self._hold
            if hold is None or hold.scanner is None or hold.call:
                break
            if hold.closed_at is not None:
                candidate = self._joined()[: hold.closed_at]
                named = names is not None and names.search(candidate) is not None
                if named and rescue(candidate, tool_names, self._parsers)[0]:
                    hold.call = True  # a real call: hold it and whatever follows to the end
                    continue
                out.append(self._release(hold.closed_at, code=False))
            elif hold.size > self._max_held and not hold.bound_checked:
                hold.bound_checked = True
                held = self._joined()
                if names is not None and names.search(held, 0, HEAD) is not None:
                    continue  # a long call in progress (a file's content, say): keep holding
                out.append(self._release(self._bound_cut(held, names), code=False))
            else:
                break
        return "".join(out)

    def flush(self) -> str:
        """End of stream: return everything still held."""
        held = self.held
        self._hold = None
        self._pending.clear()
        self._in_code = False
        return held

    # --- internals -------------------------------------------------------------------------

    def _pump(self) -> str:
        """Scan pending input, a slice at a time, until it is used up or a candidate waits."""
        out: list[str] = []
        while self._pending and not self._waiting():
            text = self._pending.popleft()
            if len(text) > SLICE:
                self._pending.appendleft(text[SLICE:])
                text = text[:SLICE]
            out.append(self._step(text))
        return "".join(out)

    def _waiting(self) -> bool:
        """A hold awaits a decision that needs tool names (``release_if_resolved``)."""
        hold = self._hold
        if hold is None or hold.scanner is None or hold.call:
            return False
        return hold.closed_at is not None or (
            hold.size > self._max_held and not hold.bound_checked
        )

    def _step(self, text: str) -> str:
        hold = self._hold
        if hold is None:
            return self._free(text)
        if hold.scanner is None:  # a partial marker: decide it together with the new text
            carried = self._joined()
            self._hold = None
            return self._free(carried + text)
        offset = hold.size
        hold.parts.append(text)
        hold.size += len(text)
        released, rest = self._scan(hold, text, offset)
        return released + self._free(rest)

    def _free(self, text: str) -> str:
        """Scan text while not holding: emit prose, open a hold at the first marker."""
        out: list[str] = []
        while text:
            if self._in_code:
                text = self._through_code(text, out)
                continue
            found = self._search(text)
            if found is None:
                keep = self._partial_start(text)
                out.append(self._emit(text[:keep]))
                if keep < len(text):
                    self._hold = _Hold("", None, parts=[text[keep:]], size=len(text) - keep)
                break
            position, marker = found
            inline = _inline_code_end(text, position) if marker == FENCE else -1
            if inline != -1:  # settled already: no hold to open (a backtick flood's cost)
                out.append(self._emit(text[:inline]))
                text = text[inline:]
                continue
            out.append(self._emit(text[:position]))
            released, text = self._open(marker, text[position:])
            out.append(released)
        return "".join(out)

    def _search(self, text: str, start: int = 0) -> tuple[int, str] | None:
        if self._pattern is None:
            return None
        match = self._pattern.search(text, start)
        if match is None:
            return None
        found = match.group()
        return match.start(), found if found in self._tag_set else found[0]

    def _partial_start(self, text: str) -> int:
        """Where a possible marker begins at the very end of ``text`` (a proper prefix of a
        tag, or a brace followed only by whitespace)."""
        if self._brace_partial is not None:
            tail = text[-(MAX_BRACE_GAP + 1) :]
            match = self._brace_partial.search(tail)
            if match is not None:
                return len(text) - len(tail) + match.start()
        tail = text[-self._longest_prefix :] if self._longest_prefix else ""
        if not any(char in tail for char in self._first_chars):  # the common case: prose
            return len(text)
        for size in range(min(self._longest_prefix, len(text)), 0, -1):
            if text[-size:] in self._prefixes:
                return len(text) - size
        return len(text)

    def _through_code(self, text: str, out: list[str]) -> str:
        """Inside a released code block: emit up to and including its closing fence."""
        match = _FenceScan._CLOSE.search(("\n" if self._line_start else "\x00") + text)
        if match is not None:
            self._in_code = False
            out.append(self._emit(text[: match.end() - 1]))
            return text[match.end() - 1 :]
        ticks = len(text) - len(text.rstrip("`"))
        keep = len(text) - ticks if ticks < 3 else len(text)  # "``" may become the close
        out.append(self._emit(text[:keep]))
        if keep < len(text):
            self._hold = _Hold("", None, parts=[text[keep:]], size=len(text) - keep)
        return ""

    def _open(self, marker: str, text: str) -> tuple[str, str]:
        """Start holding ``text`` (which begins with ``marker``)."""
        scanner: Scanner
        if marker in BRACES:
            scanner = _BraceScan(marker)
        elif marker == FENCE:
            scanner = _FenceScan([t for t in self._tags if t != FENCE])
        else:
            scanner = _TagScan(marker)
        hold = _Hold(marker, scanner, parts=[text], size=len(text))
        self._hold = hold
        if isinstance(scanner, _BraceScan):
            released, rest = self._scan(hold, text[1:], 1) if len(text) > 1 else ("", "")
            return released, rest
        return self._scan(hold, text, 0)

    def _scan(self, hold: _Hold, chunk: str, offset: int) -> tuple[str, str]:
        """Run the hold's scanner over new text; release at once what cannot be a call."""
        if hold.scanner is None or hold.closed_at is not None or hold.call or not chunk:
            return "", ""
        step = hold.scanner.feed(chunk, offset)
        if step is None:
            return "", ""
        kind, position, code = step
        if kind == "closed":
            hold.closed_at = position
            # What follows the candidate is not part of it: it waits, unscanned.
            held = self._joined()
            if position < len(held):
                self._pending.appendleft(held[position:])
                hold.parts[:] = [held[:position]]
                hold.size = position
            return "", ""
        held = self._joined()
        self._hold = None
        released = self._emit(held[:position])
        self._in_code = code
        return released, held[position:]

    def _release(self, cut: int, *, code: bool) -> str:
        """Emit held[:cut]; the rest goes back to the pending input, to be scanned again."""
        held = self._joined()
        self._hold = None
        self._in_code = code
        if cut < len(held):
            self._pending.appendleft(held[cut:])
        return self._emit(held[:cut])

    def _bound_cut(self, held: str, names: re.Pattern[str] | None) -> int:
        """How much of a long hold that names no tool to release: up to the first later
        marker whose first KiB names a tool or is not all there yet; with no such marker,
        everything but a possible marker beginning at the end."""
        incomplete = max(1, len(held) - HEAD)
        found = self._search(held, incomplete)
        best = found[0] if found is not None else None
        # The earliest marker with a name in its first KiB lies in the window before the
        # first name that has a marker there; the "first marker from here" only moves on.
        marker = -1
        for name in names.finditer(held) if names is not None else ():
            window = max(1, name.start() - HEAD + 1)
            if best is not None and window >= best:
                break
            if marker < window:
                found = self._search(held, window)
                marker = found[0] if found is not None else len(held)
            if marker <= name.start():
                best = marker if best is None else min(best, marker)
                break
        return best if best is not None else max(1, self._partial_start(held))

    def _joined(self) -> str:
        hold = self._hold
        if hold is None:
            return ""
        if len(hold.parts) > 1:
            hold.parts[:] = ["".join(hold.parts)]
        return hold.parts[0] if hold.parts else ""

    def _emit(self, text: str) -> str:
        """Record what goes out, to know whether the next character starts a line."""
        if text:
            newline = text.rfind("\n")
            blank = not text[newline + 1 :].strip(" \t")
            self._line_start = blank if newline != -1 else (self._line_start and blank)
        return text

    def _names_pattern(self, names: frozenset[str]) -> re.Pattern[str] | None:
        """A tool name standing as a word of its own (None: no names, nothing can be a call)."""
        if sum(map(len, names)) > _CACHED_NAMES:  # a huge tool list is not kept around
            return _names_pattern.__wrapped__(names)
        return _names_pattern(names)


_CACHED_NAMES = 8192
"""Tool name sets up to this many characters keep their compiled pattern across requests."""

_Tables = tuple[
    str, tuple[str, ...], frozenset[str], "re.Pattern[str] | None", "re.Pattern[str] | None",
    frozenset[str], int, frozenset[str],
]


@functools.lru_cache(maxsize=64)
def _marker_tables(unique: frozenset[str]) -> _Tables:
    """What a scanner derives from its markers: the same for every request of an engine, so
    built once (the regex and prefix sets cost more than a short answer's scan)."""
    braces = "".join(sorted(m for m in unique if m in BRACES))
    tags = tuple(sorted(unique - set(BRACES), key=len, reverse=True))
    alternatives = [re.escape(m) for m in tags]
    gap = f"[ \\t\\r\\n]{{0,{MAX_BRACE_GAP}}}"
    if "{" in braces:
        alternatives.append(r"\{" + gap + '"')
    if "[" in braces:
        alternatives.append(r"\[" + gap + r"\{")
    pattern = re.compile("|".join(alternatives)) if alternatives else None
    brace_partial = (
        re.compile("[" + re.escape(braces) + "]" + gap + r"\Z") if braces else None
    )
    prefixes = frozenset(t[:size] for t in tags for size in range(1, len(t)))
    longest = max((len(p) for p in prefixes), default=0)
    return (
        braces, tags, frozenset(tags), pattern, brace_partial, prefixes, longest,
        frozenset(t[0] for t in tags),
    )


@functools.lru_cache(maxsize=256)
def _names_pattern(names: frozenset[str]) -> re.Pattern[str] | None:
    """A tool name standing as a word of its own (None: no names, nothing can be a call);
    clients send the same tools on every turn, so the pattern is kept across requests."""
    words = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w.-])(?:{words})(?![\w.-])") if words else None
