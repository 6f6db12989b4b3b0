"""The streaming hold-back scanner: prose goes out at once, only a possible printed call waits.

Rules, in the order they apply to the text of one answer:

* A marker (a rescue parser's opening such as ``<tool_call>`` or a code fence) starts holding
  where it starts, anywhere in the text; everything after it is held too.
* ``{`` and ``[`` are special: they hold only when they open the response or a line (after
  optional spaces or tabs). A brace mid-line (``a set {1,2}``) is ordinary prose and is never
  delayed; a model printing a call starts it on its own line.
* Text ending in the beginning of a marker (``"... <tool"``, ``"``"``) is held until the next
  feed shows whether the marker completes.
* Openings that cannot start a call are released as soon as that is visible, without needing
  tool names: ``{`` not followed by ``"``, ``[`` not followed by ``{``, inline
  ```` ```code``` ````, and a fenced code block whose body does not start with JSON (the block
  then streams through as prose until its closing fence).
* :meth:`HoldBack.release_if_resolved` decides complete candidates (a balanced JSON value, a
  closed fence, a closed ``<tool_call>``/``<function=>`` tag) with the rescue parsers: a call
  for a known tool keeps everything held until :meth:`HoldBack.flush`; anything else is
  released. A hold longer than ``max_held`` whose head does not name a known tool is released.

Cost is linear: each feed scans only its new text (held text is scanned incrementally by the
hold's own scanner). Text is rescanned only after a hold is released, and holds of ambiguous
openings are bounded by ``max_held``.
"""

from __future__ import annotations

import re
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
                return ("release", 1, False)  # mismatched brackets: not JSON
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
        unique = {m for m in markers if m and m[0] not in "\r\n"}
        self._braces = "".join(sorted(m for m in unique if m in BRACES))
        self._tags = sorted(unique - set(BRACES), key=len, reverse=True)
        alternatives = [re.escape(m) for m in self._tags]
        if self._braces:
            alternatives.append(r"\n[ \t]*[" + re.escape(self._braces) + "]")
        self._pattern = re.compile("|".join(alternatives)) if alternatives else None
        self._prefixes = {t[:size] for t in self._tags for size in range(1, len(t))}
        self._longest_prefix = max((len(p) for p in self._prefixes), default=0)
        self._first_chars = {t[0] for t in self._tags}
        self._line_start = True  # the emitted text so far ends at the start of a line
        self._in_code = False  # inside a fenced code block that was released as prose
        self._hold: _Hold | None = None

    # --- public ----------------------------------------------------------------------------

    @property
    def held(self) -> str:
        """The text currently held back."""
        return self._joined() if self._hold is not None else ""

    @property
    def holding(self) -> bool:
        return self._hold is not None and self._hold.size > 0

    def feed(self, text: str) -> str:
        """Take the next piece of the answer; return the text that is safe to emit now."""
        hold = self._hold
        if not text:
            return ""
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

    def release_if_resolved(self, tool_names: Collection[str]) -> str:
        """Release held text that can no longer become a call for one of ``tool_names``."""
        names = frozenset(tool_names)
        out: list[str] = []
        while (hold := self._hold) is not None and hold.scanner is not None and not hold.call:
            if hold.closed_at is not None:
                calls, _ = rescue(self._joined()[: hold.closed_at], names, self._parsers)
                if calls:
                    hold.call = True  # a real call: hold it and whatever follows to the end
                    break
                released, rest = self._release(hold.closed_at, code=False)
            elif hold.size > self._max_held and not hold.bound_checked:
                hold.bound_checked = True
                if self._names_a_tool(self._joined(), names):
                    break  # a long call in progress (a file's content, say): keep holding
                cut, code = hold.scanner.bound_cut(hold.size)
                released, rest = self._release(cut, code=code)
            else:
                break
            out.append(released)
            out.append(self._free(rest))
        return "".join(out)

    def flush(self) -> str:
        """End of stream: return everything still held."""
        held = self.held
        self._hold = None
        self._in_code = False
        return held

    # --- internals -------------------------------------------------------------------------

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
            out.append(self._emit(text[:position]))
            released, text = self._open(marker, text[position:])
            out.append(released)
        return "".join(out)

    def _search(self, text: str) -> tuple[int, str] | None:
        if self._pattern is None:
            return None
        # A sentinel stands for what precedes ``text``, so "^" needs no special case.
        match = self._pattern.search(("\n" if self._line_start else "\x00") + text)
        if match is None:
            return None
        if match.group()[0] != "\n":
            return match.start() - 1, match.group()
        position = match.end() - 2
        tag = next((t for t in self._tags if text.startswith(t, position)), None)
        return position, tag or text[position]

    def _partial_start(self, text: str) -> int:
        """Where a proper prefix of a tag marker begins at the very end of ``text``."""
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
            return "", ""
        if hold.marker in BRACES:
            # "[" at a line start may be the beginning of a tag such as "[TOOL_CALLS]".
            held = self._joined()
            tag = next((t for t in self._tags if held.startswith(t)), None)
            if tag is not None:
                self._hold = None
                return self._open(tag, held)
            if any(t.startswith(held) for t in self._tags):
                hold.scanner = None  # a partial marker: the next feed decides
                return "", ""
        return self._release(position, code=code)

    def _release(self, cut: int, *, code: bool) -> tuple[str, str]:
        held = self._joined()
        self._hold = None
        released = self._emit(held[:cut])
        self._in_code = code
        return released, held[cut:]

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

    @staticmethod
    def _names_a_tool(held: str, names: frozenset[str]) -> bool:
        head = held[:1024]
        return any(
            re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", head) is not None
            for name in names
        )
