"""The record a rescue-parser plugin registers, and what a parser returns."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RescuedCall:
    """A tool call found in text: ``arguments`` is already a parsed JSON object."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RescueParser:
    name: str
    parse: Callable[[str, Collection[str]], list[RescuedCall]]
    """``parse(text, tool_names)``: calls found for known tools, in order, or []. Never raises."""
    markers: tuple[str, ...] = ()
    """Openings that may begin this format in a stream, such as ``"<tool_call>"``."""
    order: int = 100
