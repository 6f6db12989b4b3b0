"""Decoding a JSON value that starts inside a long text, at a cost that follows what it reads.

``json.JSONDecoder.raw_decode(text, pos)`` is the right tool for printed calls (it respects
strings and nesting and says where the value ends), but a failed decode builds a
``JSONDecodeError``, which counts the newlines from the text's very start to the error: an
answer with thousands of call-looking openings that do not decode cost a scan of the whole
text each (a megabyte of ``[TOOL_CALLS]`` took minutes). :func:`decode_at` decodes from a
window after ``pos`` instead, widened only while the value may go on past it.
"""

from __future__ import annotations

import json
from typing import Any

WINDOW = 4096
"""The first window's size in characters; each retry widens it four times."""

_NEAR_END = 16
"""A failure (or a value's end) this close to a window's end may be the window cutting a
token (``tru``, ``12`` of ``12.5``)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# NaN/Infinity are not JSON: refusing them here keeps every rescued call serializable.
DECODER = json.JSONDecoder(parse_constant=_reject_constant)


class DecodeFailed(ValueError):
    """No JSON value at the position: the decoder's message and where in the whole text the
    decoding failed."""

    def __init__(self, msg: str, pos: int) -> None:
        super().__init__(f"{msg} (at {pos})")
        self.msg, self.pos = msg, pos


def decode_at(text: str, pos: int) -> tuple[Any, int]:
    """The JSON value starting at ``text[pos]`` and the index just after it, as
    ``DECODER.raw_decode(text, pos)`` gives them; raises :class:`DecodeFailed` (or
    ``ValueError`` for NaN, ``RecursionError`` for deep nesting) where it would raise."""
    size = WINDOW
    while True:
        window = text[pos : pos + size]
        whole = pos + size >= len(text)
        try:
            value, end = DECODER.raw_decode(window)
        except json.JSONDecodeError as exc:
            cut = exc.msg.startswith("Unterminated") or exc.pos >= len(window) - _NEAR_END
            if whole or not cut:
                raise DecodeFailed(exc.msg, pos + exc.pos) from None
        else:
            if whole or end <= len(window) - _NEAR_END:  # a number near the end may go on
                return value, pos + end
        size *= 4
