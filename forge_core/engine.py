"""The guardrail engine: one request, up to ``max_retries + 1`` backend calls, one good answer.

Data flows one way: a :class:`ChatCall` (OpenAI-shaped, whichever protocol the client spoke)
-> request transforms -> backend client -> normalize -> validate / rescue / retry -> events
for an emitter. Both client protocols use this engine; wire formats live at the edges.

Both paths, :meth:`Engine.complete` and :meth:`Engine.stream`, judge an answer the same way:
the text is split into what a stream would already have shown and what it would still hold
(``Splitter``), the held part is searched for printed calls, every call is validated, and
what the client sees across attempts is recorded in one ``Transcript`` (both in
:mod:`forge_core.guardrails.attempt`). That is what makes the same backend output give the
same final message, streamed or not.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from forge_core.backend import BackendClient, BackendRequest, BackendSpec
from forge_core.config import GuardrailSettings
from forge_core.errors import BackendHTTPError
from forge_core.guardrails.attempt import (
    CallAssembler,
    Splitter,
    Transcript,
    finish_reason,
    fix_ids,
)
from forge_core.guardrails.feedback import corrective_messages, merge_same_role
from forge_core.guardrails.reader import END, TIMEOUT, BackendReader
from forge_core.guardrails.records import RescueParser
from forge_core.guardrails.rescue import BUILTIN_PARSERS, all_markers, rescue_by
from forge_core.guardrails.respond import RESPOND_TOOL_NAME, add_respond_tool, unwrap_respond
from forge_core.guardrails.validate import Problem, ToolIndex, required_tool, validate_turn
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

FALLBACK = "[forge] The model did not produce a valid tool call: "
"""Start of the answer when retries are exhausted and the model wrote no text at all."""


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


# --- per-request decisions ---------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    """How the guardrails treat one request, decided once from its tools and tool_choice."""

    index: ToolIndex
    names: frozenset[str]
    """Names a printed call may use: the client's tools, plus respond when forge added it."""
    guarded: bool
    """The request carries usable tools: answers are judged."""
    rescue: bool
    required: bool
    """tool_choice requires a call ("required", a named tool, Anthropic "any"/"tool")."""
    respond: bool
    """forge injected the respond tool (the client has no tool of that name)."""
    constrain: bool


def _is_none_choice(choice: Any) -> bool:
    return choice == "none" or (isinstance(choice, dict) and choice.get("type") == "none")


@dataclass(slots=True)
class _Verdict:
    turn: AssistantTurn
    problems: list[Problem]
    prose: str = ""
    """Still to show if accepted: the held text minus rescued call markup, plus any respond()
    answer."""
    tail: str = ""
    """Still to show when giving up: the held text as the model wrote it, plus any respond()
    answer."""


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
        self.all_parsers = list(parsers)
        # Tools rendered into the prompt (the prompt capability) come back as text: reading it
        # is then the protocol, not a rescue, so --no-rescue does not turn it off.
        parse_text = settings.rescue or getattr(client, "tools_in_prompt", False)
        self.parsers = self.all_parsers if parse_text else []
        self.transforms = list(transforms)
        self.markers = all_markers(self.parsers)

    # --- request building ----------------------------------------------------------------

    def _plan(self, call: ChatCall) -> _Plan:
        index = ToolIndex(call.tools)
        guarded = bool(index)
        active = guarded and not _is_none_choice(call.tool_choice)
        required = active and required_tool(call.tool_choice)[0]
        # Under a required choice respond() would only be an escape that forge then rejects.
        respond = (
            active
            and not required
            and self.settings.inject_respond_tool
            and RESPOND_TOOL_NAME not in index
        )
        return _Plan(
            index=index,
            names=index.names | {RESPOND_TOOL_NAME} if respond else index.names,
            guarded=guarded,
            rescue=active and bool(self.parsers),
            required=required,
            respond=respond,
            constrain=active
            and self.settings.constrained_retry
            and self.spec.capabilities.constrained_decoding,
        )

    def _first_request(self, call: ChatCall, plan: _Plan) -> BackendRequest:
        body = add_respond_tool(call.body) if plan.respond else call.body
        request = BackendRequest(
            body=body,
            verbatim=body is call.body,
            client_protocol=call.client_protocol,
            original=call.original,
        )
        return apply_transforms(self.transforms, self.spec.name, request)

    def _retry_request(
        self,
        call: ChatCall,
        plan: _Plan,
        history: list[dict[str, Any]],
        attempt: int,
        problems: list[Problem],
    ) -> tuple[BackendRequest, bool]:
        """A normalized request: the client's messages plus the corrective turns so far.

        Returns the request and whether the backend client constrained it.
        """
        body = dict(call.body)
        body["messages"] = merge_same_role([*call.body["messages"], *history])
        if plan.respond:
            body = add_respond_tool(body)
        constrained = False
        if plan.constrain:
            target = self._target_tool(call, plan, problems)
            tool = plan.index.get(target) if target else None
            try:
                strengthened = self.client.constrain_retry(body, tool)
            except Exception:  # a plugin bug must not lose the request: retry unconstrained
                log.exception("%s: constrain_retry failed; retrying unconstrained", self.spec.name)
            else:
                constrained = strengthened is not body
                body = strengthened
        if constrained:
            call.notes.append("constrained")
        request = BackendRequest(
            body=body,
            verbatim=False,
            attempt=attempt,
            client_protocol=call.client_protocol,
            original=call.original,
        )
        return apply_transforms(self.transforms, self.spec.name, request), constrained

    @staticmethod
    def _target_tool(call: ChatCall, plan: _Plan, problems: list[Problem]) -> str | None:
        """The tool a constrained retry should force: the named choice, else the tool the
        failed call meant, else the only tool; None lets the backend choose among all."""
        _, named = required_tool(call.tool_choice)
        if named is not None and named in plan.index:
            return named
        for problem in problems:
            if problem.kind != "unknown_tool" and problem.tool and problem.tool in plan.index:
                return problem.tool
        return next(iter(plan.index)) if len(plan.index) == 1 else None

    # --- judging one answer ---------------------------------------------------------------

    def _parsers_for(self, plan: _Plan, constrained: bool) -> Sequence[RescueParser]:
        if constrained:
            # A constrained answer is JSON in the content by design: always read it, even
            # with --no-rescue.
            return self.all_parsers or BUILTIN_PARSERS
        return self.parsers if plan.rescue else ()

    @staticmethod
    def _splitter(plan: _Plan, attempt: int, parsers: Sequence[RescueParser]) -> Splitter:
        if not plan.guarded:
            return Splitter("pass")
        if plan.required or attempt > 0:
            return Splitter("all")
        if parsers:
            return Splitter("scan", parsers, plan.names)
        return Splitter("pass")

    def _judge(
        self,
        call: ChatCall,
        plan: _Plan,
        turn: AssistantTurn,
        held: str,
        parsers: Sequence[RescueParser],
    ) -> _Verdict:
        """Validate ``turn`` (its content already split off); ``held`` may hold printed calls."""
        prose = held
        if parsers and not turn.tool_calls and held.strip():
            found, remaining, parser = rescue_by(held, plan.names, parsers)
            if found:
                turn.tool_calls = [
                    ToolCall(new_id("call_"), c.name, json.dumps(c.arguments, ensure_ascii=False))
                    for c in found
                ]
                prose = remaining
                call.notes.append(f"rescued:{parser}")
        tail = held
        if plan.respond:
            turn = unwrap_respond(turn)  # a respond() call becomes turn.content
            answer, turn.content = turn.content, ""
            prose, tail = _paragraphs(prose, answer), _paragraphs(tail, answer)
        if fix_ids(turn.tool_calls):
            call.notes.append("ids-fixed")
        problems = validate_turn(turn, plan.index, call.tool_choice)
        turn.finish_reason = finish_reason(turn)
        return _Verdict(turn, problems, prose, tail)

    def _give_up(
        self, call: ChatCall, verdict: _Verdict, shown: Transcript, note: str
    ) -> str:
        """No valid call: show what the model wrote as plain text, never a broken call.

        Returns the text still to show (already recorded in ``shown``).
        """
        call.notes.append(note)
        reasons = "; ".join(p.message for p in verdict.problems)
        # Kinds and tool names only: problem messages quote argument values.
        log.warning("guardrails gave up (%s) tools=%s", note, _tools_of(verdict.problems))
        piece = shown.show_text(verdict.tail)
        if not shown.text.strip():
            piece += shown.show_text(FALLBACK + reasons)
        return piece

    def _retrying(self, call: ChatCall, problems: list[Problem]) -> None:
        call.notes.append("retry:" + _kinds(problems))
        log.info("tool call rejected (%s) tools=%s", _kinds(problems), _tools_of(problems))

    # --- non-streaming ----------------------------------------------------------------------

    async def complete(self, call: ChatCall) -> AssistantTurn:
        """One answer for ``call``: a valid call, accepted prose, or plain text after giving up."""
        plan = self._plan(call)
        shown = Transcript()
        request, constrained = self._first_request(call, plan), False
        history: list[dict[str, Any]] = []
        usage: Usage | None = None
        verdict: _Verdict | None = None
        for attempt in range(self.settings.max_retries + 1):
            shown.next_attempt()
            try:
                turn = await self.client.complete(request)
            except BackendHTTPError as exc:
                if verdict is None:
                    raise
                self._give_up(call, verdict, shown, f"retry-failed:{exc.backend_status}")
                return _plain(shown, usage)
            usage = _add(usage, turn.usage)
            if not plan.guarded:
                turn.finish_reason = finish_reason(turn)
                turn.usage = usage
                return turn
            parsers = self._parsers_for(plan, constrained)
            splitter = self._splitter(plan, attempt, parsers)
            # Split the text exactly as the stream would, so both paths agree.
            sent = splitter.feed(turn.content) if turn.content else ""
            held = splitter.flush()
            shown.show_reasoning(turn.reasoning)
            shown.show_text(sent)
            turn.content, turn.reasoning = "", ""
            verdict = self._judge(call, plan, turn, held, parsers)
            if not verdict.problems:
                shown.show_text(verdict.prose)
                return AssistantTurn(
                    content=shown.text,
                    tool_calls=verdict.turn.tool_calls,
                    finish_reason=verdict.turn.finish_reason,
                    usage=usage,
                    reasoning=shown.reasoning,
                    stop_sequence=verdict.turn.stop_sequence,
                )
            verdict.turn.content = sent + verdict.prose
            if attempt == self.settings.max_retries:
                break
            self._retrying(call, verdict.problems)
            history += corrective_messages(verdict.turn, verdict.problems, plan.index)
            request, constrained = self._retry_request(
                call, plan, history, attempt + 1, verdict.problems
            )
        assert verdict is not None
        self._give_up(call, verdict, shown, "retries-exhausted:" + _kinds(verdict.problems))
        return _plain(shown, usage)

    # --- streaming --------------------------------------------------------------------------

    async def stream(self, call: ChatCall) -> AsyncIterator[StreamEvent]:
        """The answer for ``call`` as events: prose at once, calls only once complete and valid.

        Failed attempts are retried invisibly; the events always end with one ``Finished``.
        While something is held back and the client has heard nothing for a keep-alive
        interval, a ``KeepAlive`` goes out: the interval counts the client's silence, not the
        backend's, so a long call arriving in many small fragments still gets keep-alives.
        """
        plan = self._plan(call)
        shown = Transcript()
        loop = asyncio.get_running_loop()
        interval = self.settings.keepalive_interval
        last_sent = loop.time()
        request, constrained = self._first_request(call, plan), False
        history: list[dict[str, Any]] = []
        usage: Usage | None = None
        verdict: _Verdict | None = None
        for attempt in range(self.settings.max_retries + 1):
            shown.next_attempt()
            parsers = self._parsers_for(plan, constrained)
            splitter = self._splitter(plan, attempt, parsers)
            calls = CallAssembler()
            turn = AssistantTurn()
            sent: list[str] = []
            reader = BackendReader(self.client.stream(request))
            try:
                while True:
                    # Not holding, the next chunk is awaited without any timer: prose pays
                    # nothing for keep-alives.
                    holding = splitter.holding or bool(calls)
                    timeout = last_sent + interval - loop.time() if holding else None
                    chunk = await reader.next(timeout)
                    if chunk is END:
                        break
                    if chunk is TIMEOUT:
                        last_sent = loop.time()
                        yield KeepAlive()
                        continue
                    assert isinstance(chunk, BackendChunk)
                    if chunk.reasoning:
                        last_sent = loop.time()
                        yield ReasoningDelta(shown.show_reasoning(chunk.reasoning))
                    if chunk.text:
                        safe = splitter.feed(chunk.text)
                        if safe:
                            sent.append(safe)
                            last_sent = loop.time()
                            yield TextDelta(shown.show_text(safe))
                    for fragment in chunk.tool_calls:
                        calls.add(fragment)
                    if chunk.finish_reason:
                        turn.finish_reason = chunk.finish_reason
                        turn.stop_sequence = chunk.stop_sequence
                    if chunk.usage:
                        turn.usage = chunk.usage
            except BackendHTTPError as exc:
                if verdict is None:
                    raise
                note = f"retry-failed:{exc.backend_status}"
                piece = self._give_up(call, verdict, shown, note)
                if piece:
                    yield TextDelta(piece)
                yield Finished("stop", usage)
                return
            finally:
                await reader.aclose()
            usage = _add(usage, turn.usage)
            turn.tool_calls = calls.assemble(self.client.name)
            held = splitter.flush()
            if not plan.guarded:
                for position, tool_call in enumerate(turn.tool_calls):
                    yield ToolCallReady(position, tool_call)
                yield Finished(finish_reason(turn), usage, turn.stop_sequence)
                return
            verdict = self._judge(call, plan, turn, held, parsers)
            if not verdict.problems:
                piece = shown.show_text(verdict.prose)
                if piece:
                    yield TextDelta(piece)
                for position, tool_call in enumerate(verdict.turn.tool_calls):
                    yield ToolCallReady(position, tool_call)
                yield Finished(verdict.turn.finish_reason, usage, verdict.turn.stop_sequence)
                return
            verdict.turn.content = "".join(sent) + verdict.prose
            if attempt == self.settings.max_retries:
                break
            self._retrying(call, verdict.problems)
            history += corrective_messages(verdict.turn, verdict.problems, plan.index)
            request, constrained = self._retry_request(
                call, plan, history, attempt + 1, verdict.problems
            )
        assert verdict is not None
        piece = self._give_up(call, verdict, shown, "retries-exhausted:" + _kinds(verdict.problems))
        if piece:
            yield TextDelta(piece)
        yield Finished("stop", usage)


def _add(total: Usage | None, usage: Usage | None) -> Usage | None:
    if usage is None:
        return total
    return usage if total is None else total + usage


def _tools_of(problems: list[Problem]) -> str:
    return ",".join(sorted({p.tool for p in problems if p.tool})) or "-"


def _kinds(problems: list[Problem]) -> str:
    return "+".join(sorted({p.kind for p in problems}))


def _paragraphs(first: str, second: str) -> str:
    if not second:
        return first
    return f"{first}\n\n{second}" if first.strip() else second


def _plain(shown: Transcript, usage: Usage | None) -> AssistantTurn:
    return AssistantTurn(
        content=shown.text, finish_reason="stop", usage=usage, reasoning=shown.reasoning
    )


__all__ = ["ChatCall", "Engine", "RESPOND_TOOL_NAME"]
