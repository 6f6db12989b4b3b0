"""The record a rescue-parser plugin registers, and what a parser returns."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class RescuedCall:
    """A tool call found in text: ``arguments`` is already a parsed JSON object."""

    name: str
    arguments: dict[str, Any]
    texts: dict[str, str] | None = field(default=None, compare=False)
    """Top-level values the format wrote as bare text (XML ``<parameter=k>42</parameter>``),
    decoded as JSON where they were JSON: forge gives a parameter whose schema says string its
    text back (``"42"`` stays ``"42"``). None when the format types its values itself."""


@dataclass(frozen=True, slots=True)
class RescueParser:
    name: str
    parse: Callable[[str, Collection[str]], list[RescuedCall]]
    """``parse(text, tool_names)``: calls found for known tools, in order, or []. Never raises."""
    markers: tuple[str, ...] = ()
    """Openings that may begin this format in a stream, such as ``"<tool_call>"``."""
    order: int = 100
