"""Patterns anchored at a line start, found fast on long lines.

``re.compile(r"(?m)^[ \\t]*```")`` has no literal prefix, so a search tries the pattern at
every position of the text: a model's 1 MB answer on one line costs tens of milliseconds of
event-loop time per search. :class:`LineStart` finds the same matches by looking only after
each newline (a literal the regex engine skips to) and at the very start, and returns the
ordinary ``re.Match`` objects the multiline pattern would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator


class LineStart:
    """``re.compile("(?m)^" + body, flags)``, searched only where a line starts."""

    __slots__ = ("_here", "_after_newline")

    def __init__(self, body: str, flags: int = 0) -> None:
        flags |= re.MULTILINE  # a ``^`` inside ``body`` keeps its line meaning
        self._here = re.compile(body, flags)
        self._after_newline = re.compile(rf"\n(?={body})", flags)

    def match(self, text: str, pos: int = 0) -> re.Match[str] | None:
        """A match at ``pos`` if ``pos`` starts a line (as ``^`` would allow)."""
        if pos == 0 or text[pos - 1 : pos] == "\n":
            return self._here.match(text, pos)
        return None

    def search(self, text: str, pos: int = 0) -> re.Match[str] | None:
        found = self.match(text, pos)
        if found is not None:
            return found
        # ``pos`` itself was tried; every later line start follows a newline at or after it.
        newline = self._after_newline.search(text, pos)
        return None if newline is None else self._here.match(text, newline.end())

    def finditer(self, text: str, pos: int = 0) -> Iterator[re.Match[str]]:
        while (found := self.search(text, pos)) is not None:
            yield found
            pos = found.end() if found.end() > found.start() else found.start() + 1
