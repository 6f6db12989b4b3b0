"""The guardrail engine: one request, up to ``max_retries + 1`` backend calls, one good answer.

Data flows one way: a :class:`ChatCall` (OpenAI-shaped, whichever protocol the client spoke)
-> request transforms -> backend client -> normalize -> validate / rescue / retry -> events
for an emitter. Both client protocols use this engine; wire formats live at the edges.

There is one attempt loop (``Engine._events``). :meth:`Engine.stream` hands out its events;
:meth:`Engine.complete` folds the same events into one message, each attempt reading a
non-streamed backend answer as a single chunk. In each attempt the text is split into what the
client may see at once and what waits for the verdict (``Splitter``), the held part is searched
for printed calls, every call is validated, and what the client was shown across attempts is
recorded in one ``Transcript`` (both in :mod:`forge_core.guardrails.attempt`). The same backend
output therefore gives the same final message, streamed or not.

The engine writes nothing into the caller's objects: what the guardrails did comes out as
:class:`~forge_core.turns.Note` events (and in :attr:`Answer.notes`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from forge_core.backend import BackendClient, BackendRequest, BackendSpec
from forge_core.boundary import noting
from forge_core.config import GuardrailSettings
from forge_core.deadline import Deadlines
from forge_core.errors import BackendHTTPError
from forge_core.guardrails import decision, intent, relevance
from forge_core.guardrails.attempt import (
    CallAssembler,
    Splitter,
    Transcript,
    finish_reason,
    fix_ids,
)
from forge_core.guardrails.feedback import corrective_messages, merge_same_role
from forge_core.guardrails.placeholders import conversation_text
from forge_core.guardrails.reader import END, TIMEOUT, BackendReader
from forge_core.guardrails.records import RescueParser
from forge_core.guardrails.repair import repair_calls, typed_text_values
from forge_core.guardrails.rescue import (
    BUILTIN_PARSERS,
    all_markers,
    open_at_end,
    rescue_by,
    think_text,
)
from forge_core.guardrails.respond import RESPOND_TOOL_NAME, add_respond_tool, unwrap_respond
from forge_core.guardrails.unparsed import UnparsedOutput
from forge_core.guardrails.validate import Problem, ToolIndex, required_tool, validate_turn
from forge_core.transforms import RequestTransform, active_transforms, apply_transforms
from forge_core.turns import (
    AssistantTurn,
    BackendChunk,
    Finished,
    KeepAlive,
    Note,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallFragment,
    ToolCallReady,
    Usage,
    new_id,
)

log = logging.getLogger("forge.guardrails")

FALLBACK = "[forge] The model did not produce a valid tool call: "
"""Start of the answer when retries are exhausted and the model wrote no text at all."""
_PROSE_KINDS = frozenset({"no_tool_call", "tool_intent", "tool_expected", "tool_decision"})
"""Failures of an answer that is prose, not a broken call."""
_CUT_MESSAGE = "the answer was cut off by max_tokens inside a tool call"
_UNPARSED_MESSAGE = "the backend could not read the answer as a tool call"


@dataclass(slots=True)
class ChatCall:
    """One client request, normalized to the OpenAI chat shape."""

    body: dict[str, Any]
    client_protocol: Literal["openai", "anthropic"] = "openai"
    original: dict[str, Any] | None = None

    @property
    def tools(self) -> list[dict[str, Any]]:
        tools = self.body.get("tools")
        return tools if isinstance(tools, list) else []

    @property
    def tool_choice(self) -> Any:
        return self.body.get("tool_choice")


@dataclass(slots=True)
class Answer:
    """A whole answer and what the guardrails did to get it."""

    turn: AssistantTurn
    notes: list[Note]


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
    intent: bool = False
    """Under auto, before any tool result: prose that tries to use a tool is a failed call."""
    asked: frozenset[str] = frozenset()
    """Tools the last user message names itself: mentioning them is no sign of intent."""
    expected: tuple[str, ...] = ()
    """Under auto, before any tool result: the tools the last user message clearly asks for
    (guardrails/relevance.py); a prose answer is then a failed call."""
    preferred: tuple[str, ...] | None = None
    """The tools the request asks for, whatever the choice: what a constrained retry targets
    when nothing more precise decides. None until needed (:meth:`Engine._preferred`): most
    requests never retry, so only a first turn under auto pays for it up front."""
    decide: bool = False
    """Under auto with ``--auto-intent decide``: a refusal or description gets a retry
    constrained to a call or respond() (guardrails/decision.py)."""
    active: bool = True
    """Calls are allowed: the request has tools and tool_choice is not "none". Otherwise any
    call the backend still returns is judged against no tools at all (never passed on)."""


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
        deadlines: Deadlines | None = None,
    ) -> None:
        self.client = client
        self.spec = spec
        self.settings = settings
        self.deadlines = deadlines
        """First-token and silence bounds on every backend call (None: httpx's per-read
        timeouts only, for an engine built without the CLI)."""
        self.all_parsers = list(parsers)
        # Tools rendered into the prompt (the prompt capability) come back as text: reading it
        # is then the protocol, not a rescue, so --no-rescue does not turn it off.
        parse_text = settings.rescue or getattr(client, "tools_in_prompt", False)
        self.parsers = self.all_parsers if parse_text else []
        self.transforms = active_transforms(
            transforms, declined=getattr(client, "declined_transforms", ())
        )
        self.markers = all_markers(self.parsers)

    def _bounded(self, work: Awaitable[AssistantTurn]) -> Awaitable[AssistantTurn]:
        if self.deadlines is None:
            return work
        return self.deadlines.answer(self.client.name, work)

    def _paced(self, chunks: AsyncIterator[BackendChunk]) -> AsyncIterator[BackendChunk]:
        if self.deadlines is None:
            return chunks
        return self.deadlines.paced(self.client.name, chunks)

    # --- request building ----------------------------------------------------------------

    def _plan(self, call: ChatCall) -> _Plan:
        index = ToolIndex(
            call.tools,
            (lambda: conversation_text(call.body.get("messages")))
            if self.settings.placeholder_check
            else None,
        )
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
        messages = call.body.get("messages")
        messages = messages if isinstance(messages, list) else []
        # Like a rescue, intent reads the text as a call attempt: --no-rescue turns it off too.
        auto_intent = (
            active
            and not required
            and self.settings.auto_intent
            and bool(self.parsers)
            and intent.applies(messages)
        )
        decide = (
            auto_intent and self.settings.auto_decide and RESPOND_TOOL_NAME not in index
        )
        preferred = (
            relevance.asked_for(messages, call.tools)
            if auto_intent and self.settings.auto_relevance
            else None
        )
        return _Plan(
            index=index,
            names=index.names | {RESPOND_TOOL_NAME} if respond or decide else index.names,
            guarded=guarded,
            rescue=active and bool(self.parsers),
            required=required,
            respond=respond,
            constrain=active
            and self.settings.constrained_retry
            and self.spec.capabilities.constrained_decoding,
            intent=auto_intent,
            asked=intent.asked_about(messages, index.names) if auto_intent else frozenset(),
            expected=preferred or (),
            preferred=preferred,
            decide=decide,
            active=active,
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
        notes: _Notes,
        call: ChatCall,
        plan: _Plan,
        history: list[dict[str, Any]],
        attempt: int,
        problems: list[Problem],
        constrained_history: list[dict[str, Any]] | None = None,
    ) -> tuple[BackendRequest, bool]:
        """A normalized request: the client's messages plus the corrective turns so far.

        A constrained retry under ``retry_context: clean`` leaves out what the unconstrained
        attempts wrote (``constrained_history`` holds only the constrained attempts' feedback):
        measured on small models, a failed prose or code answer in the context pulls the
        constrained retry towards wrong values, while the constraint alone fixes the shape.
        Returns the request and whether the backend client constrained it.
        """
        body = dict(call.body)
        body["messages"] = _append_retry(call.body["messages"], history)
        if plan.respond:
            body = add_respond_tool(body)
        constrained = False
        if plan.constrain:
            target = self._target_tool(call, plan, problems)
            tool = plan.index.get(target) if target else None
            base = body
            if self.settings.retry_context == "clean":
                base = dict(call.body)
                base["messages"] = _append_retry(
                    call.body["messages"], constrained_history or []
                )
            preferred = self._preferred(call, plan)
            if tool is None and preferred:  # any of the few tools the request asks for
                base = relevance.only_tools(base, preferred)
            if plan.decide and any(p.kind == "tool_decision" for p in problems):
                tool, base = None, add_respond_tool(base)  # a call, or respond() in prose
            try:
                strengthened = self.client.constrain_retry(base, tool)
            except Exception:  # a plugin bug must not lose the request: retry unconstrained
                log.exception("%s: constrain_retry failed; retrying unconstrained", self.spec.name)
            else:
                constrained = strengthened is not base
                if constrained:
                    body = _with_call_room(strengthened)
        if constrained:
            notes.add("constrained")
        request = BackendRequest(
            body=body,
            verbatim=False,
            attempt=attempt,
            client_protocol=call.client_protocol,
            original=call.original,
        )
        return apply_transforms(self.transforms, self.spec.name, request), constrained

    def _preferred(self, call: ChatCall, plan: _Plan) -> tuple[str, ...]:
        """The tools the request's last user message asks for (computed once, when needed)."""
        if plan.preferred is None:
            messages = call.body.get("messages")
            plan.preferred = (
                relevance.asked_for(messages if isinstance(messages, list) else [], call.tools)
                if plan.active and self.settings.auto_relevance
                else ()
            )
        return plan.preferred

    def _target_tool(self, call: ChatCall, plan: _Plan, problems: list[Problem]) -> str | None:
        """The tool a constrained retry should force: the named choice, else the tool the
        request asks for (of those, the one the failed call meant), else the tool the failed
        call meant, else the only tool; None lets the backend choose (among the tools the
        request asks for, if any)."""
        _, named = required_tool(call.tool_choice)
        if named is not None and named in plan.index:
            return named
        meant = relevance.meant_tool(problems, plan.index.names)
        preferred = self._preferred(call, plan)
        if preferred:  # the user's own words outweigh a failed attempt's choice
            if meant in preferred:
                return meant
            return preferred[0] if len(preferred) == 1 else None
        if meant is not None:
            return meant
        return next(iter(plan.index)) if len(plan.index) == 1 else None

    # --- judging one answer ---------------------------------------------------------------

    def _parsers_for(self, plan: _Plan, constrained: bool) -> Sequence[RescueParser]:
        if constrained:
            # A constrained answer is JSON in the content by design: always read it, even
            # with --no-rescue.
            return self.all_parsers or BUILTIN_PARSERS
        return self.parsers if plan.rescue else ()

    @staticmethod
    def _splitter(
        plan: _Plan, attempt: int, parsers: Sequence[RescueParser]
    ) -> Splitter | intent.GatedSplitter:
        if not plan.guarded:
            return Splitter("pass")
        if plan.required or plan.expected or plan.decide or attempt > 0:
            return Splitter("all")
        inner = Splitter("scan", parsers, plan.names) if parsers else Splitter("pass")
        if plan.intent:  # prose that may be tool intent waits for the verdict
            return intent.GatedSplitter(inner, intent.IntentGate(plan.index.names, plan.asked))
        return inner

    def _judge(
        self,
        notes: _Notes,
        call: ChatCall,
        plan: _Plan,
        turn: AssistantTurn,
        held: str,
        parsers: Sequence[RescueParser],
        reasoning: str = "",
        unparsed: bool = False,
        sent: str = "",
    ) -> _Verdict:
        """Validate ``turn`` (its content already split off); ``held`` may hold printed calls,
        and so may ``reasoning`` when the content has none. ``unparsed``: the backend failed
        to parse this answer, so without a valid call it is a failed one."""
        prose = held
        cut = turn.finish_reason == "length"
        late: list[Problem] = []
        if parsers and not turn.tool_calls and (held.strip() or reasoning.strip()):
            found, remaining, parser = rescue_by(held, plan.names, parsers)
            source, where = held, ""
            if not found and (plan.required or not (sent + held).strip()):
                # A thinking model may write its call in the reasoning and leave the content
                # empty; under auto, one that then answered in prose has decided against it.
                source = "\n\n".join(t for t in (reasoning, think_text(held)) if t.strip())
                found, _, parser = rescue_by(source, plan.names, parsers)
                where = ":reasoning"
            if cut and open_at_end(source if found else held):
                # Cut by max_tokens inside the markup: its last value may be truncated.
                tool = found[-1].name if found else None
                late.append(Problem("truncated", tool, None, _CUT_MESSAGE))
                found = []
            if found:
                turn.tool_calls = [
                    ToolCall(new_id("call_"), c.name, json.dumps(
                        typed_text_values(c.arguments, c.texts, plan.index.parameters(c.name)),
                        ensure_ascii=False,
                    ))
                    for c in found
                ]
                prose = remaining
                notes.add(f"rescued:{parser}{where}")
        tail = held
        responded = plan.decide and any(c.name == RESPOND_TOOL_NAME for c in turn.tool_calls)
        if plan.respond or plan.decide:
            turn = unwrap_respond(turn)  # a respond() call becomes turn.content
            answer, turn.content = turn.content, ""
            prose, tail = _paragraphs(prose, answer), _paragraphs(tail, answer)
        if fix_ids(turn.tool_calls):
            notes.add("ids-fixed")
        repairs = repair_calls(turn.tool_calls, plan.index, truncated=cut)
        if repairs:
            notes.add("repaired:" + "+".join(repairs))
        allowed = plan.index if plan.active else _NO_TOOLS
        problems = validate_turn(turn, allowed, call.tool_choice) + late
        if not problems and not turn.tool_calls:
            problems = [] if responded else self._prose_problems(plan, sent + held, unparsed)
        turn.finish_reason = finish_reason(turn)
        return _Verdict(turn, problems, prose, tail)

    @staticmethod
    def _prose_problems(plan: _Plan, text: str, unparsed: bool) -> list[Problem]:
        """Why a prose answer that ``validate_turn`` accepts is still a failed call."""
        if unparsed:
            return [Problem("unparsed", None, None, _UNPARSED_MESSAGE)]
        name = intent.find_intent(text, plan.index.names, plan.asked) if plan.intent else None
        if name is None:
            if plan.expected:
                return [relevance.expected_problem(plan.expected)]
            return [decision.PROBLEM] if plan.decide and decision.describes(text) else []
        return [
            Problem(
                "tool_intent",
                name,
                None,
                f"the answer describes using tool {name!r} instead of calling it",
            )
        ]

    def _give_up(
        self,
        notes: _Notes,
        verdict: _Verdict,
        shown: Transcript,
        note: str,
        honest: str | None = None,
    ) -> str:
        """No valid call: show ``honest`` text (default: what the model wrote), never a broken
        call; when nothing was shown, forge says in one line why there is no call.

        Returns the text still to show (already recorded in ``shown``).
        """
        notes.add(note)
        reasons = "; ".join(p.message for p in verdict.problems)
        # Kinds and tool names only: problem messages quote argument values.
        log.warning("guardrails gave up (%s) tools=%s", note, _tools_of(verdict.problems))
        piece = shown.show_text(verdict.tail if honest is None else honest)
        if not shown.text.strip():
            piece += shown.show_text(FALLBACK + reasons)
        return piece

    @staticmethod
    def _honest_tail(verdict: _Verdict, constrained: bool, previous: str) -> str:
        """The model's own text worth showing if forge gives up, updated after each attempt.

        Prose the model wrote instead of a call is kept; never a constrained attempt's
        output (JSON by design, maybe cut) nor the text of a failed call: with nothing honest
        to show, forge's own one-line note answers.
        """
        if constrained:
            return previous
        if verdict.turn.tool_calls or any(p.kind not in _PROSE_KINDS for p in verdict.problems):
            return previous
        return verdict.tail

    @staticmethod
    def _unparsed(notes: _Notes, exc: UnparsedOutput) -> AssistantTurn:
        """The answer the backend could not parse, as the model wrote it (maybe nothing)."""
        notes.add(f"unparsed:{exc.backend_status}")
        log.warning("%s could not parse the model's answer (%d chars returned)",
                    exc.backend, len(exc.text))
        return AssistantTurn(content=exc.text, finish_reason="stop")

    def _retrying(self, notes: _Notes, problems: list[Problem]) -> None:
        notes.add("retry:" + _kinds(problems))
        log.info("tool call rejected (%s) tools=%s", _kinds(problems), _tools_of(problems))

    # --- the one attempt loop -------------------------------------------------------------

    def stream(self, call: ChatCall) -> AsyncIterator[StreamEvent]:
        """The answer for ``call`` as events: prose at once, calls only once complete and valid.

        Failed attempts are retried invisibly; the events always end with one ``Finished``,
        right after the request's :class:`~forge_core.turns.Note` events. While something is
        held back and the client has heard nothing for a keep-alive interval, a ``KeepAlive``
        goes out: the interval counts the client's silence, not the backend's, so a long call
        arriving in many small fragments still gets keep-alives.
        """
        return self._events(call, streamed=True)

    async def complete(self, call: ChatCall) -> Answer:
        """One whole answer for ``call``: the fold of the events :meth:`stream` would produce,
        each attempt a non-streamed backend call (a valid call, accepted prose, or plain text
        after giving up)."""
        text: list[str] = []
        reasoning: list[str] = []
        calls: list[ToolCall] = []
        notes: list[Note] = []
        end = Finished("stop", None)
        events = self._events(call, streamed=False)
        try:
            async for event in events:
                kind = type(event)
                if kind is TextDelta:
                    text.append(event.text)  # type: ignore[union-attr]
                elif kind is ReasoningDelta:
                    reasoning.append(event.text)  # type: ignore[union-attr]
                elif kind is ToolCallReady:
                    calls.append(event.call)  # type: ignore[union-attr]
                elif kind is Note:
                    notes.append(event)  # type: ignore[arg-type]
                elif kind is Finished:
                    end = event  # type: ignore[assignment]
        finally:
            await events.aclose()
        turn = AssistantTurn(
            content="".join(text),
            tool_calls=calls,
            finish_reason=end.finish_reason,
            usage=end.usage,
            reasoning="".join(reasoning),
            stop_sequence=end.stop_sequence,
        )
        return Answer(turn, notes)

    def _reader(self, request: BackendRequest, streamed: bool) -> BackendReader | _WholeReader:
        if streamed:
            return BackendReader(self._paced(self.client.stream(request)))
        return _WholeReader(self._whole(request))

    async def _whole(self, request: BackendRequest) -> BackendChunk:
        """A non-streamed backend answer as the one chunk that holds all of it."""
        turn = await self._bounded(self.client.complete(request))
        return BackendChunk(
            text=turn.content,
            reasoning=turn.reasoning,
            tool_calls=[
                ToolCallFragment(i, c.id, c.name, c.arguments)
                for i, c in enumerate(turn.tool_calls)
            ],
            finish_reason=turn.finish_reason,
            usage=turn.usage,
            stop_sequence=turn.stop_sequence,
        )

    async def _events(self, call: ChatCall, streamed: bool) -> AsyncIterator[StreamEvent]:
        plan = self._plan(call)
        shown = Transcript()
        notes = _Notes()
        loop = asyncio.get_running_loop()
        # A whole answer arrives at once: nothing to keep alive while it is judged.
        interval = self.settings.keepalive_interval if streamed else None
        last_sent = awake = loop.time()
        with noting(notes.boundary):
            request = self._first_request(call, plan)
        constrained = False
        history: list[dict[str, Any]] = []
        constrained_history: list[dict[str, Any]] = []
        honest = ""  # what to show if forge gives up (see _honest_tail)
        usage: Usage | None = None
        verdict: _Verdict | None = None
        for attempt in range(self.settings.max_retries + 1):
            notes.attempt = attempt
            shown.next_attempt()
            parsers = self._parsers_for(plan, constrained)
            splitter = self._splitter(plan, attempt, parsers)
            calls = CallAssembler()
            turn = AssistantTurn()
            sent: list[str] = []
            thought: list[str] = []
            unparsed: UnparsedOutput | None = None
            reader = self._reader(request, streamed)
            try:
                while True:
                    # Not holding, the next chunk is awaited without any timer: prose pays
                    # nothing for keep-alives.
                    holding = interval is not None and (splitter.holding or bool(calls))
                    timeout = last_sent + interval - loop.time() if holding else None  # type: ignore[operator]
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
                        thought.append(chunk.reasoning)
                        yield ReasoningDelta(shown.show_reasoning(chunk.reasoning))
                    if chunk.text:
                        safe = await _feed(splitter, chunk.text, notes.boundary)
                        if safe:
                            sent.append(safe)
                            last_sent = loop.time()
                            yield TextDelta(shown.show_text(safe))
                        if loop.time() - awake > YIELD_AFTER:
                            # Chunks already read never suspend this task: let others run.
                            await asyncio.sleep(0)
                            awake = loop.time()
                    for fragment in chunk.tool_calls:
                        calls.add(fragment)
                    if chunk.finish_reason:
                        turn.finish_reason = chunk.finish_reason
                        turn.stop_sequence = chunk.stop_sequence
                    if chunk.usage:
                        turn.usage = chunk.usage
            except UnparsedOutput as exc:
                unparsed = exc
            except BackendHTTPError as exc:
                if verdict is None:
                    raise
                note = f"retry-failed:{exc.backend_status}"
                piece = self._give_up(notes, verdict, shown, note, honest)
                if piece:
                    yield TextDelta(piece)
                for item in notes.take():
                    yield item
                yield Finished("stop", usage)
                return
            finally:
                await reader.aclose()
            usage = _add(usage, turn.usage)
            if unparsed is not None:
                # The server's error carries the model's text from where its parser failed;
                # call fragments streamed before are partial reads of that text.
                calls = CallAssembler()
            turn.tool_calls = calls.assemble(self.client.name)
            safe = await _drain(splitter, notes.boundary)
            if safe:
                sent.append(safe)
                yield TextDelta(shown.show_text(safe))
            with noting(notes.boundary):
                held = splitter.flush()
            if unparsed is not None:  # judged whole, never shown raw
                held += self._unparsed(notes, unparsed).content
            if not plan.guarded and not turn.tool_calls and verdict is None:
                for item in notes.take():
                    yield item
                yield Finished(finish_reason(turn), usage, turn.stop_sequence)
                return
            reasoning = "".join(thought)
            judge = functools.partial(
                self._judge, notes, call, plan, turn, held, parsers, reasoning,
                unparsed is not None, "".join(sent),
            )
            with noting(notes.boundary):
                if _small(held, reasoning, turn.tool_calls, plan.index):
                    verdict = judge()
                else:
                    # Off the event loop: rescue and schema validation of a hostile answer
                    # are bounded, but may take longer than other requests can wait.
                    verdict = await asyncio.to_thread(judge)
            if not verdict.problems:
                piece = shown.show_text(verdict.prose)
                if piece:
                    yield TextDelta(piece)
                for position, tool_call in enumerate(verdict.turn.tool_calls):
                    yield ToolCallReady(position, tool_call)
                for item in notes.take():
                    yield item
                yield Finished(verdict.turn.finish_reason, usage, verdict.turn.stop_sequence)
                return
            verdict.turn.content = "".join(sent) + verdict.prose
            if attempt == self.settings.max_retries:
                break
            honest = self._honest_tail(verdict, constrained, honest)
            self._retrying(notes, verdict.problems)
            feedback = corrective_messages(verdict.turn, verdict.problems, plan.index)
            history += feedback
            if constrained:
                constrained_history += feedback
            notes.attempt = attempt + 1  # the retry's request belongs to the next attempt
            with noting(notes.boundary):
                request, constrained = self._retry_request(
                    notes, call, plan, history, attempt + 1, verdict.problems,
                    constrained_history,
                )
        assert verdict is not None
        honest = self._honest_tail(verdict, constrained, honest)
        note = "retries-exhausted:" + _kinds(verdict.problems)
        piece = self._give_up(notes, verdict, shown, note, honest)
        if piece:
            yield TextDelta(piece)
        for item in notes.take():
            yield item
        yield Finished("stop", usage)


class _WholeReader:
    """The reader of a non-streamed attempt: its one chunk, then the end.

    The backend call is awaited in the engine's own task, as any non-streamed request is:
    cancelling it (the client left) cancels the HTTP request with it.
    """

    __slots__ = ("_answer",)

    def __init__(self, answer: Awaitable[BackendChunk]) -> None:
        self._answer: Awaitable[BackendChunk] | None = answer

    async def next(self, timeout: float | None = None) -> BackendChunk | str:
        answer, self._answer = self._answer, None
        return END if answer is None else await answer

    async def aclose(self) -> None:
        if self._answer is not None:  # never awaited (the loop ended early): no warning
            close = getattr(self._answer, "close", None)
            if close is not None:
                close()
            self._answer = None


class _Notes:
    """One request's notes, each tagged with the attempt it belongs to.

    ``boundary`` is where the error boundary writes while plugin code runs
    (:class:`~forge_core.boundary.noting`); it is never cleared, so a parser failing on every
    chunk is noted (and logged) once per request.
    """

    __slots__ = ("boundary", "attempt", "_ready", "_taken")

    def __init__(self) -> None:
        self.boundary: list[str] = []
        self.attempt = 0
        self._ready: list[Note] = []
        self._taken = 0

    def add(self, text: str) -> None:
        self._collect()
        self._ready.append(Note(text, self.attempt))

    def take(self) -> list[Note]:
        """The notes not handed out yet, in the order they were made."""
        self._collect()
        out, self._ready = self._ready, []
        return out

    def _collect(self) -> None:
        if len(self.boundary) > self._taken:
            self._ready += [Note(t, self.attempt) for t in self.boundary[self._taken:]]
            self._taken = len(self.boundary)


CALL_ROOM = 512
"""Output tokens a constrained retry may use at least, whatever the client's ``max_tokens``: a
constrained call cut by the limit is unusable, so cutting it would be forge's fault."""


def _with_call_room(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with ``max_tokens`` / ``max_completion_tokens`` raised to :data:`CALL_ROOM`."""
    out = dict(body)
    for key in ("max_tokens", "max_completion_tokens"):
        limit = out.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit < CALL_ROOM:
            out[key] = CALL_ROOM
    return out


def _append_retry(
    messages: list[dict[str, Any]], history: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The client's messages, then the corrective turns: the client's own messages are never
    rewritten (the backend's prefix cache stays valid), and same-role messages are merged only
    where the corrective turns join on, for templates that demand strict alternation."""
    if not messages:
        return merge_same_role(history)
    return [*messages[:-1], *merge_same_role([messages[-1], *history])]


_NO_TOOLS = ToolIndex([])
"""What calls are judged against when the request allows none."""

BIG_TEXT = 8192
"""Text longer than this is split off the event loop (a flood of markers costs real time)."""

SMALL_TEXT = 512
"""Held text, reasoning and call arguments up to this size in all are judged on the event
loop when every offered schema is light (small, no references): the rescue is linear and the
validation a few thousand evaluations at most, less than a thread hop costs. Anything else
is judged off the loop."""


def _small(held: str, reasoning: str, calls: list[ToolCall], index: ToolIndex) -> bool:
    size = len(held) + len(reasoning) + sum(len(c.arguments) for c in calls)
    if size > SMALL_TEXT:
        return False
    # With text to rescue from, a call may name any offered tool; else only the called ones.
    names = index if held.strip() or reasoning.strip() else {c.name for c in calls}
    return all(index.light(name) for name in names if name in index)


YIELD_AFTER = 0.01
"""Seconds a stream may work through already-read chunks before it lets other tasks run."""


async def _feed(splitter: Splitter | intent.GatedSplitter, text: str, sink: list[str]) -> str:
    """The part of ``text`` the client may see now (the scanner may run plugin parsers:
    their failures are noted in ``sink``)."""
    with noting(sink):
        if len(text) > BIG_TEXT:
            return await asyncio.to_thread(splitter.feed, text)
        return splitter.feed(text)


async def _drain(splitter: Splitter | intent.GatedSplitter, sink: list[str]) -> str:
    """Text an intent gate still held that turned out to be plain prose (shown as such)."""
    if not isinstance(splitter, intent.GatedSplitter):
        return ""
    with noting(sink):
        if splitter.holding:  # judging the held text scans it all: a long one, off the loop
            return await asyncio.to_thread(splitter.drain)
        return splitter.drain()


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


__all__ = ["Answer", "ChatCall", "Engine", "RESPOND_TOOL_NAME"]
