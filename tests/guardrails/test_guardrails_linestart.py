"""LineStart finds exactly what the ``(?m)^`` pattern it replaces finds, at every position."""

from __future__ import annotations

import random
import re

import pytest

from forge_core.guardrails.linestart import LineStart

BODIES = [
    r"[ \t]*```",
    r"[ \t]*(?:<think>|\[THINK\])",
    r"[ \t]*```[^\n]*\n(.*?)^[ \t]*```",  # a ``^`` of its own inside the body
    r'[ \t]*(?:```[\w-]*[ \t]*\n[ \t]*)?[\[{][ \t\r\n]*["{]',
]
ALPHABET = ["\n", " ", "\t", "`", "```", "<think>", "[THINK]", "{", '"', "[", "a", "json"]


def texts(seed: int, count: int = 300) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(ALPHABET, k=rng.randint(0, 24))) for _ in range(count)]


def spans(found: re.Match[str] | None) -> tuple[int, int, tuple[str | None, ...]] | None:
    return None if found is None else (found.start(), found.end(), found.groups())


@pytest.mark.parametrize("body", BODIES)
def test_search_match_and_finditer_agree_with_the_multiline_pattern(body: str) -> None:
    fast, plain = LineStart(body, re.S), re.compile("^" + body, re.M | re.S)
    for text in texts(len(body)):
        assert [spans(m) for m in fast.finditer(text)] == [
            spans(m) for m in plain.finditer(text)
        ], text
        for pos in range(len(text) + 1):
            assert spans(fast.search(text, pos)) == spans(plain.search(text, pos)), (text, pos)
            assert spans(fast.match(text, pos)) == spans(plain.match(text, pos)), (text, pos)


def test_on_a_megabyte_line_only_the_start_and_the_places_after_newlines_match() -> None:
    pattern = LineStart(r"[ \t]*```")
    line = "a` " * 400_000
    assert pattern.search(line) is None
    assert spans(pattern.search("```" + line)) == (0, 3, ())
    found = pattern.search(line + "\n  ```")
    assert found is not None and found.start() == len(line) + 1
    assert pattern.search(line + "\n  ```", len(line) + 2) is None  # not a line start
