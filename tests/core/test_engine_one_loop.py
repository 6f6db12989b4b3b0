"""One attempt loop: ``complete()`` is the fold of the events ``stream()`` produces, and the
engine hands its notes out (tagged with their attempt) instead of writing into the request."""

from __future__ import annotations

import copy
import json
from typing import Any

from forge_core.protocols import OPENAI
from forge_core.testing import (
    WEATHER_TOOL,
    ScriptedBackend,
    build_state,
    chat,
    fake_spec,
    reply_text,
    reply_tool_call,
)
from forge_core.turns import Finished, Note, TextDelta, ToolCallReady


def _replies() -> list[Any]:
    # A call that breaks the schema ("kelvin" is no unit), then a valid one.
    return [
        reply_tool_call("get_weather", {"city": "Paris", "unit": "kelvin"}),
        reply_tool_call("get_weather", {"city": "Paris", "unit": "c"}),
    ]


def _call(content: str = "Weather in Paris?", **extra: Any) -> Any:
    return OPENAI.parse(chat(content, tools=[WEATHER_TOOL], **extra)).call


def _state(backend: ScriptedBackend, **kw: Any) -> Any:
    """forge in front of ``backend``, whose client constrains retries (as a plugin declaring
    constrained decoding does) with a JSON schema."""
    state = build_state(backend, spec=fake_spec(constrained_decoding=True), **kw)
    state.client.constrain_retry = lambda body, tool: {
        **body, "response_format": {"type": "json_object"}
    }
    return state


async def _complete(backend: ScriptedBackend, call: Any, **kw: Any) -> Any:
    state = _state(backend, **kw)
    await state.client.start()
    try:
        return await state.engine.complete(call)
    finally:
        await state.client.aclose()


async def _stream(backend: ScriptedBackend, call: Any, **kw: Any) -> list[Any]:
    state = _state(backend, **kw)
    await state.client.start()
    try:
        return [event async for event in state.engine.stream(call)]
    finally:
        await state.client.aclose()


async def test_complete_returns_its_notes_per_attempt_and_leaves_the_request_alone() -> None:
    backend = ScriptedBackend().push(*_replies())
    call = _call()
    before = copy.deepcopy(call.body)
    answer = await _complete(backend, call)
    assert [(c.name, json.loads(c.arguments)) for c in answer.turn.tool_calls] == [
        ("get_weather", {"city": "Paris", "unit": "c"})
    ]
    assert answer.turn.finish_reason == "tool_calls"
    # The failed attempt's verdict belongs to attempt 0; the constrained retry to attempt 1.
    assert [(n.text, n.attempt) for n in answer.notes] == [
        ("retry:schema", 0), ("constrained", 1)
    ]
    assert call.body == before and not hasattr(call, "notes")
    # Each attempt read a whole (non-streamed) backend answer.
    assert [r.get("stream", False) for r in backend.requests] == [False, False]
    assert "response_format" in backend.requests[1]


async def test_the_stream_ends_with_the_same_notes_right_before_finished() -> None:
    events = await _stream(ScriptedBackend().push(*_replies()), _call(stream=True))
    kinds = [type(e).__name__ for e in events]
    assert kinds[-3:] == ["Note", "Note", "Finished"], kinds
    assert "Note" not in kinds[:-3]
    notes = [(e.text, e.attempt) for e in events if isinstance(e, Note)]
    assert notes == [("retry:schema", 0), ("constrained", 1)]


async def test_complete_is_the_fold_of_the_stream_for_the_same_backend_output() -> None:
    # Prose with a printed call under auto: shown text, a rescue, a retry, a valid call.
    printed = 'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": 5}}'
    replies = [
        reply_text(printed + "</tool_call>"),
        reply_tool_call("get_weather", {"city": "Paris"}),
    ]
    # A message that does not plainly ask for the tool: the stream shows prose at once.
    ask = "Hi, can you help me?"
    answer = await _complete(ScriptedBackend().push(*replies), _call(ask))
    events = await _stream(ScriptedBackend().push(*replies), _call(ask, stream=True))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls = [e.call for e in events if isinstance(e, ToolCallReady)]
    end = events[-1]
    assert isinstance(end, Finished)
    assert answer.turn.content == text and text.strip() == "Let me check."
    assert [(c.name, c.arguments) for c in answer.turn.tool_calls] == [
        (c.name, c.arguments) for c in calls
    ]
    assert answer.turn.finish_reason == end.finish_reason == "tool_calls"
    assert [n.text for n in answer.notes] == [e.text for e in events if isinstance(e, Note)]
    assert [n.text for n in answer.notes][:2] == ["rescued:hermes", "retry:schema"]


async def test_the_inspector_record_gets_each_attempts_notes() -> None:
    from forge_core.testing import forge_client

    backend = ScriptedBackend().push(*_replies())
    async with forge_client(backend, state=_state(backend, inspect=5)) as http:
        r = await http.post(
            "/v1/chat/completions", json=chat("Weather in Paris?", tools=[WEATHER_TOOL])
        )
        assert r.headers["x-forge-guardrail"] == "retry:schema,constrained"
        listed = (await http.get("/forge/requests")).json()
    attempts = listed["requests"][0]["attempts"]
    assert [a["notes"] for a in attempts] == [["retry:schema"], ["constrained"]]
