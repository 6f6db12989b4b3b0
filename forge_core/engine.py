"""The guardrail engine: one request, up to ``max_retries + 1`` backend calls, one good answer.

Data flows one way: a :class:`ChatCall` (OpenAI-shaped, whichever protocol the client spoke)
-> request transforms -> backend client -> normalize -> validate / rescue / retry -> events
for an emitter. Both client protocols use this engine; wire formats live at the edges.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal

from forge_core.backend import BackendClient, BackendRequest, BackendSpec
from forge_core.config import GuardrailSettings
from forge_core.guardrails.feedback import corrective_messages, merge_same_role
from forge_core.guardrails.holdback import HoldBack
from forge_core.guardrails.records import RescueParser
from forge_core.guardrails.rescue import rescue
from forge_core.guardrails.respond import RESPOND_TOOL_NAME, add_respond_tool, unwrap_respond
from forge_core.guardrails.validate import Problem, ToolIndex, validate_turn
from forge_core.transforms import RequestTransform, apply_transforms
from forge_core.turns import (
    AssistantTurn,
    BackendChunk,
    Finished,
    KeepAlive,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallReady,
    Usage,
    new_id,
)

log = logging.getLogger("forge.guardrails")


@dataclass(slots=True)
class ChatCall:
    """One client request, normalized to the OpenAI chat shape."""

    body: dict[str, Any]
    client_protocol: Literal["openai", "anthropic"] = "openai"
    original: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    """What the guardrails did (``rescued:hermes``, ``retry:schema``, ...): header and logs."""

    @property
    def tools(self) -> list[dict[str, Any]]:
        tools = self.body.get("tools")
        return tools if isinstance(tools, list) else []

    @property
    def tool_choice(self) -> Any:
        return self.body.get("tool_choice")


@dataclass(slots=True)
class _Verdict:
    turn: AssistantTurn
    problems: list[Problem]
    prose: str = ""
    """Text the client should still receive (the held part, minus any rescued call markup)."""


class Engine:
    """Drives one backend for every request; stateless between requests."""

    def __init__(
        self,
        client: BackendClient,
        spec: BackendSpec,
        settings: GuardrailSettings,
        parsers: Sequence[RescueParser] = (),
        transforms: Sequence[RequestTransform] = (),
    ) -> None:
        self.client = client
        self.spec = spec
        self.settings = settings
        self.parsers = list(parsers) if settings.rescue else []
        self.transforms = list(transforms)
        self.markers = tuple(sorted({m for p in self.parsers for m in p.markers}))

    # --- request building ----------------------------------------------------------------

    def _first_request(self, call: ChatCall) -> BackendRequest:
        body = call.body
        if self.settings.inject_respond_tool and call.tools:
            body = add_respond_tool(body)
        request = BackendRequest(
            body=body,
            verbatim=body is call.body,
            client_protocol=call.client_protocol,
            original=call.original,
        )
        return apply_transforms(self.transforms, self.spec.name, request)

    def _retry_request(
        self, call: ChatCall, history: list[dict[str, Any]], attempt: int, target: str | None
    ) -> BackendRequest:
        """A normalized request: the client's messages plus the corrective turns so far."""
        body = dict(call.body)
        body["messages"] = merge_same_role(list(call.body["messages"]) + history)
        if self.settings.inject_respond_tool and call.tools:
            body = add_respond_tool(body)
        if self.spec.capabilities.constrained_decoding:
            index = ToolIndex(call.tools)
            tool = index.get(target) if target else None
            body = self.client.constrain_retry(body, tool)
        request = BackendRequest(
            body=body,
            verbatim=False,
            attempt=attempt,
            client_protocol=call.client_protocol,
            original=call.original,
        )
        return apply_transforms(self.transforms, self.spec.name, request)

    # --- judging one answer ---------------------------------------------------------------

    def _judge(
        self, call: ChatCall, index: ToolIndex, turn: AssistantTurn, held: str
    ) -> _Verdict:
        """Validate ``turn``; ``held`` is the part of its text that may hold a printed call."""
        answer = ""
        if self.settings.inject_respond_tool:
            turn = unwrap_respond(turn)  # a respond() call becomes turn.content
            answer, turn.content = turn.content, ""
        prose = held
        if not turn.tool_calls and held and self.parsers:
            found, remaining = rescue(held, index.names, self.parsers)
            if found:
                turn.tool_calls = [
                    ToolCall(new_id("call_"), c.name, json.dumps(c.arguments, ensure_ascii=False))
                    for c in found
                ]
                turn.finish_reason = "tool_calls"
                prose = remaining
                call.notes.append("rescued")
        if answer:
            prose = f"{prose}\n\n{answer}" if prose.strip() else answer
        problems = validate_turn(turn, index, call.tool_choice)
        if not problems and turn.tool_calls:
            turn.finish_reason = "tool_calls"
        return _Verdict(turn, problems, prose)

    def _target_tool(self, call: ChatCall, problems: list[Problem]) -> str | None:
        choice = call.tool_choice
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            if isinstance(name, str):
                return name
        named = [p.tool for p in problems if p.tool and p.kind != "unknown_tool"]
        if named:
            return named[0]
        return call.tools[0]["function"]["name"] if len(call.tools) == 1 else None

    def _give_up(self, call: ChatCall, verdict: _Verdict) -> AssistantTurn:
        """Retries exhausted: a plain assistant message, never a broken call."""
        call.notes.append("retries-exhausted")
        reasons = "; ".join(p.message for p in verdict.problems)
        log.warning("guardrails gave up after %d retries: %s", self.settings.max_retries, reasons)
        turn = verdict.turn
        text = turn.content
        if not text.strip():
            text = f"[forge] The model did not produce a valid tool call: {reasons}"
        return AssistantTurn(content=text, finish_reason="stop", usage=turn.usage)

    # --- non-streaming ----------------------------------------------------------------------

    async def complete(self, call: ChatCall) -> AssistantTurn:
        index = ToolIndex(call.tools)
        request = self._first_request(call)
        history: list[dict[str, Any]] = []
        usage: Usage | None = None
        for attempt in range(self.settings.max_retries + 1):
            turn = await self.client.complete(request)
            usage = _add(usage, turn.usage)
            if not index:
                turn.usage = usage
                return turn
            # Split the text exactly as the stream would, so both paths agree.
            sent, held = self._split(turn.content, index)
            turn.content = ""
            verdict = self._judge(call, index, turn, held)
            verdict.turn.content = sent + verdict.prose
            verdict.turn.usage = usage
            if not verdict.problems:
                return verdict.turn
            self._note_problems(call, verdict.problems)
            if attempt == self.settings.max_retries:
                return self._give_up(call, verdict)
            history += corrective_messages(verdict.turn, verdict.problems, index)
            request = self._retry_request(
                call, history, attempt + 1, self._target_tool(call, verdict.problems)
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _split(self, text: str, index: ToolIndex) -> tuple[str, str]:
        if not self.parsers or not text:
            return text, ""
        holdback = HoldBack(self.markers)
        sent = holdback.feed(text)
        sent += holdback.release_if_resolved(index.names)
        return sent, holdback.flush()

    def _note_problems(self, call: ChatCall, problems: list[Problem]) -> None:
        kinds = sorted({p.kind for p in problems})
        call.notes.append("retry:" + ",".join(kinds))
        log.info("tool call rejected (%s): %s", ",".join(kinds), problems[0].message)

    # --- streaming --------------------------------------------------------------------------

    async def stream(self, call: ChatCall) -> AsyncIterator[StreamEvent]:
        index = ToolIndex(call.tools)
        request = self._first_request(call)
        history: list[dict[str, Any]] = []
        usage: Usage | None = None
        for attempt in range(self.settings.max_retries + 1):
            holdback = HoldBack(self.markers) if (index and self.parsers) else None
            turn = AssistantTurn()
            fragments: dict[int, list[Any]] = {}
            async with aclosing(self._with_keepalive(request, holdback, fragments)) as chunks:
                async for chunk in chunks:
                    if chunk is None:
                        yield KeepAlive()
                        continue
                    if chunk.reasoning:
                        yield ReasoningDelta(chunk.reasoning)
                    if chunk.text:
                        safe = chunk.text
                        if holdback is not None:
                            safe = holdback.feed(chunk.text)
                            safe += holdback.release_if_resolved(index.names)
                        if safe:
                            turn.content += safe
                            yield TextDelta(safe)
                    for frag in chunk.tool_calls:
                        slot = fragments.setdefault(frag.index, [None, None, []])
                        slot[0] = slot[0] or frag.id
                        slot[1] = slot[1] or frag.name
                        slot[2].append(frag.arguments)
                    if chunk.finish_reason:
                        turn.finish_reason = chunk.finish_reason
                    if chunk.usage:
                        turn.usage = chunk.usage
            usage = _add(usage, turn.usage)
            turn.tool_calls = [
                ToolCall(slot[0] or new_id("call_"), slot[1] or "", "".join(slot[2]))
                for _, slot in sorted(fragments.items())
            ]
            held = holdback.flush() if holdback is not None else ""
            if not index:
                for position, tool_call in enumerate(turn.tool_calls):
                    yield ToolCallReady(position, tool_call)
                yield Finished(_finish(turn), usage)
                return
            sent_text = turn.content
            turn.content = ""
            verdict = self._judge(call, index, turn, held)
            if not verdict.problems:
                if verdict.prose:
                    yield TextDelta(verdict.prose)
                for position, tool_call in enumerate(verdict.turn.tool_calls):
                    yield ToolCallReady(position, tool_call)
                yield Finished(_finish(verdict.turn), usage)
                return
            self._note_problems(call, verdict.problems)
            if attempt == self.settings.max_retries:
                verdict.turn.content = sent_text + held
                final = self._give_up(call, verdict)
                tail = held if verdict.turn.content.strip() else final.content
                if tail:
                    yield TextDelta(tail)
                yield Finished("stop", usage)
                return
            verdict.turn.content = sent_text + held
            history += corrective_messages(verdict.turn, verdict.problems, index)
            request = self._retry_request(
                call, history, attempt + 1, self._target_tool(call, verdict.problems)
            )

    async def _with_keepalive(
        self,
        request: BackendRequest,
        holdback: HoldBack | None,
        fragments: dict[int, list[Any]],
    ) -> AsyncIterator[BackendChunk | None]:
        """The backend's chunks; ``None`` after each keep-alive interval spent holding."""
        interval = self.settings.keepalive_interval
        source = self.client.stream(request)
        pending: asyncio.Future[BackendChunk] | None = None
        try:
            while True:
                holding = bool(fragments) or (holdback is not None and holdback.holding)
                if pending is None and not holding:
                    try:
                        yield await anext(source)
                    except StopAsyncIteration:
                        return
                    continue
                if pending is None:
                    pending = asyncio.ensure_future(anext(source))
                done, _ = await asyncio.wait({pending}, timeout=interval)
                if not done:
                    yield None
                    continue
                task, pending = pending, None
                try:
                    yield task.result()
                except StopAsyncIteration:
                    return
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            await source.aclose()  # type: ignore[attr-defined]


def _add(total: Usage | None, usage: Usage | None) -> Usage | None:
    if usage is None:
        return total
    return usage if total is None else total + usage


def _finish(turn: AssistantTurn) -> str:
    if turn.tool_calls:
        return "tool_calls"
    return turn.finish_reason if turn.finish_reason in ("stop", "length") else "stop"


__all__ = ["ChatCall", "Engine", "RESPOND_TOOL_NAME"]
