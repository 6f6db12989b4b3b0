"""The pieces of one attempt that both engine paths share, so they judge alike.

:class:`Splitter` decides which text a stream may show at once and which waits for the
verdict; :class:`Transcript` records what the client has been shown across attempts;
:class:`CallAssembler` puts streamed tool-call fragments back together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from forge_core.errors import BackendProtocolError
from forge_core.guardrails.holdback import HoldBack
from forge_core.guardrails.records import RescueParser
from forge_core.guardrails.rescue import all_markers
from forge_core.turns import AssistantTurn, ToolCall, ToolCallFragment, new_id


class Transcript:
    """The text and reasoning the client has been shown, across attempts.

    Text from a later attempt is set off from earlier text by a blank line. The streaming path
    emits exactly the pieces this returns; the non-streaming path answers with :attr:`text`.
    """

    __slots__ = ("_text", "_reasoning", "_fresh_text", "_fresh_reasoning")

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._fresh_text = self._fresh_reasoning = True

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    def next_attempt(self) -> None:
        self._fresh_text = self._fresh_reasoning = True

    def show_text(self, piece: str) -> str:
        if not piece:
            return ""
        if self._fresh_text:
            self._fresh_text = False
            piece = _separated(self._text, piece)
        self._text.append(piece)
        return piece

    def show_reasoning(self, piece: str) -> str:
        if not piece:
            return ""
        if self._fresh_reasoning:
            self._fresh_reasoning = False
            piece = _separated(self._reasoning, piece)
        self._reasoning.append(piece)
        return piece


def _separated(before: list[str], piece: str) -> str:
    if not before:
        return piece
    last = before[-1]
    if last.endswith("\n\n"):
        return piece
    return ("\n" if last.endswith("\n") else "\n\n") + piece


class Splitter:
    """Splits one attempt's text into what can be shown now and what waits for the verdict.

    ``pass``: everything is shown (no tools, or nothing to rescue). ``scan``: the hold-back
    scanner holds only what may be a printed call. ``all``: everything waits; used when a call
    is required (an answer without one is never final, so showing its text early would only
    duplicate it after a retry) and on retries (the client already saw the first attempt).
    """

    __slots__ = ("_mode", "_holdback", "_names", "_parts")

    def __init__(
        self,
        mode: Literal["pass", "scan", "all"],
        parsers: Sequence[RescueParser] = (),
        names: frozenset[str] = frozenset(),
    ) -> None:
        self._mode = mode
        self._names = names
        self._parts: list[str] = []
        self._holdback = (
            HoldBack(all_markers(parsers), parsers=parsers) if mode == "scan" else None
        )

    @property
    def holding(self) -> bool:
        if self._holdback is not None:
            return self._holdback.holding
        return self._mode == "all"

    def feed(self, text: str) -> str:
        if self._holdback is not None:
            safe = self._holdback.feed(text)
            if self._holdback.holding:
                safe += self._holdback.release_if_resolved(self._names)
            return safe
        if self._mode == "all":
            self._parts.append(text)
            return ""
        return text

    def flush(self) -> str:
        if self._holdback is not None:
            return self._holdback.flush()
        held, self._parts = "".join(self._parts), []
        return held


@dataclass(slots=True)
class _Slot:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


class CallAssembler:
    """Tool-call fragments of one streamed answer, assembled per call.

    A fragment that carries a new id for an index already in use starts a new call: some
    servers send ``index: 0`` for every parallel call.
    """

    __slots__ = ("_slots", "_by_index")

    def __init__(self) -> None:
        self._slots: list[_Slot] = []
        self._by_index: dict[int, _Slot] = {}

    def __bool__(self) -> bool:
        return bool(self._slots)

    def add(self, fragment: ToolCallFragment) -> None:
        slot = self._by_index.get(fragment.index)
        if slot is None or (fragment.id and slot.id and fragment.id != slot.id):
            slot = _Slot()
            self._slots.append(slot)
            self._by_index[fragment.index] = slot
        slot.id = slot.id or fragment.id
        slot.name = slot.name or fragment.name
        slot.arguments.append(fragment.arguments)

    def assemble(self, backend: str) -> list[ToolCall]:
        calls = []
        for slot in self._slots:
            if not slot.name:  # the non-streamed parser treats this as a broken envelope too
                raise BackendProtocolError(backend, "streamed a tool call without a function name")
            calls.append(ToolCall(slot.id or new_id("call_"), slot.name, "".join(slot.arguments)))
        return calls


def fix_ids(calls: list[ToolCall]) -> bool:
    """Give a fresh id to every call whose id is missing or repeats an earlier one.

    Ids are the server's business more than the model's (some servers omit them or repeat
    them for parallel calls), so they are repaired rather than retried. Returns True if any
    id changed.
    """
    seen: set[str] = set()
    fixed = False
    for tool_call in calls:
        if not tool_call.id or tool_call.id in seen:
            tool_call.id = new_id("call_")
            fixed = True
        seen.add(tool_call.id)
    return fixed


def finish_reason(turn: AssistantTurn) -> str:
    """``tool_calls`` when there are calls, else the backend's stop/length/content_filter."""
    if turn.tool_calls:
        return "tool_calls"
    reason = turn.finish_reason
    return reason if reason in ("stop", "length", "content_filter") else "stop"
