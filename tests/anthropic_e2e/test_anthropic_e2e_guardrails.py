"""The guardrails on ``/v1/messages``: the same engine as ``/v1/chat/completions``.

Schema validation against ``input_schema``, rescue of a printed call, retries with corrective
feedback (constrained where the plugin can), the respond tool, and giving up cleanly; each
checked through the real SDK, streamed and not, and by what the backend received.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic_e2e_support import MODEL, TIME, WEATHER, Forge, ask, frames, run_forge, steps

from forge_core.config import GuardrailSettings
from forge_core.testing import reply_text, reply_tool_call

PRINTED_CALL = (
    'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
)


def final(forge: Forge, stream: bool, **body: Any) -> Any:
    """The SDK's final message for ``body``, streamed or not."""
    client = forge.sdk()
    if not stream:
        return client.messages.create(**body)
    with client.messages.stream(**body) as events:
        return events.get_final_message()


@pytest.mark.parametrize("stream", [False, True])
def test_arguments_that_break_the_schema_are_retried_with_feedback(
    forge: Forge, stream: bool
) -> None:
    forge.backend.push(
        reply_tool_call("get_weather", {"city": 5}, call_id="call_bad"),
        reply_tool_call("get_weather", {"city": "Paris"}),
    )
    message = final(forge, stream, **ask(tools=[WEATHER]))
    # The client only ever sees the valid call.
    assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
        ("tool_use", {"city": "Paris"})
    ]
    assert message.stop_reason == "tool_use"
    first, retry = forge.backend.requests
    assert len(retry["messages"]) == len(first["messages"]) + 2
    echo, feedback = retry["messages"][-2:]
    assert echo["role"] == "assistant" and echo["tool_calls"][0]["id"] == "call_bad"
    assert json.loads(echo["tool_calls"][0]["function"]["arguments"]) == {"city": 5}
    assert feedback["role"] == "tool" and feedback["tool_call_id"] == "call_bad"
    assert "city" in feedback["content"]
    # The client's own messages and tools are unchanged on the retry.
    assert retry["messages"][: len(first["messages"])] == first["messages"]
    assert retry["tools"] == first["tools"]


def test_the_guardrail_header_says_what_happened(forge: Forge) -> None:
    forge.backend.push(
        reply_tool_call("get_weather", {"city": 5}), reply_tool_call("get_weather", {"city": "X"})
    )
    response = forge.post("/v1/messages", ask(tools=[WEATHER]))
    assert response.status_code == 200
    assert response.headers["x-forge-guardrail"].startswith("retry:")


def test_a_streamed_retry_shows_nothing_of_the_failed_attempt(forge: Forge) -> None:
    forge.backend.push(
        reply_tool_call("get_weather", {"unit": "c"}),  # "city" is required
        reply_tool_call("get_weather", {"city": "Oslo", "unit": "c"}),
    )
    response, raw = forge.stream_raw(ask(tools=[WEATHER]))
    assert response.status_code == 200
    assert steps(raw) == [
        ("message_start",),
        ("content_block_start", 0, "tool_use"),
        ("content_block_delta", 0, "input_json_delta", '{"city": "Oslo", "unit": "c"}'),
        ("content_block_stop", 0),
        ("message_delta", "tool_use"),
        ("message_stop",),
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_a_printed_call_is_rescued_into_a_tool_use_block(forge: Forge, stream: bool) -> None:
    forge.backend.push(reply_text(PRINTED_CALL))
    message = final(forge, stream, **ask(tools=[WEATHER]))
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[0].text.strip() == "Sure."
    assert "<tool_call>" not in message.content[0].text
    assert message.content[1].input == {"city": "Paris"}
    assert message.content[1].id.startswith("toolu_")
    assert message.stop_reason == "tool_use"
    assert len(forge.backend.requests) == 1  # rescued, not retried


def test_a_rescued_call_streams_its_prose_first_and_never_its_markup(forge: Forge) -> None:
    forge.backend.push(reply_text(PRINTED_CALL))
    _, raw = forge.stream_raw(ask(tools=[WEATHER]))
    deltas = [d["delta"] for n, d in frames(raw) if n == "content_block_delta"]
    texts = "".join(delta.get("text", "") for delta in deltas)
    assert "tool_call" not in texts and "get_weather" not in texts
    kinds = [d["content_block"]["type"] for n, d in frames(raw) if n == "content_block_start"]
    assert kinds == ["text", "tool_use"]


def test_prose_is_accepted_when_tool_choice_allows_it(forge: Forge) -> None:
    # A question the weather tool does not answer: prose is the right answer under auto.
    forge.backend.push(reply_text("Hello! How can I help?"))
    message = final(forge, False, **ask("Say hello in one sentence.", tools=[WEATHER]))
    assert [(b.type, b.text) for b in message.content] == [("text", "Hello! How can I help?")]
    assert message.stop_reason == "end_turn"
    assert len(forge.backend.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_any_retries_prose_until_a_call_comes(forge: Forge, stream: bool) -> None:
    forge.backend.push(
        reply_text("I think it is sunny."), reply_tool_call("get_weather", {"city": "Paris"})
    )
    message = final(forge, stream, **ask(tools=[WEATHER], tool_choice={"type": "any"}))
    assert [b.type for b in message.content] == ["tool_use"]
    assert message.stop_reason == "tool_use"
    assert [r["tool_choice"] for r in forge.backend.requests] == ["required", "required"]


def test_named_tool_choice_rejects_a_call_to_another_tool(forge: Forge) -> None:
    forge.backend.push(
        reply_tool_call("get_weather", {"city": "Paris"}),
        reply_tool_call("get_time", {"tz": "CET"}),
    )
    message = final(
        forge, False, **ask(tools=[WEATHER, TIME], tool_choice={"type": "tool", "name": "get_time"})
    )
    assert [(b.name, b.input) for b in message.content] == [("get_time", {"tz": "CET"})]
    assert len(forge.backend.requests) == 2


def test_an_unknown_tool_is_retried_naming_the_real_ones(forge: Forge) -> None:
    forge.backend.push(
        reply_tool_call("weather_lookup", {"city": "Paris"}),
        reply_tool_call("get_weather", {"city": "Paris"}),
    )
    message = final(forge, False, **ask(tools=[WEATHER]))
    assert message.content[0].name == "get_weather"
    feedback = json.dumps(forge.backend.requests[1]["messages"][-1])
    assert "get_weather" in feedback


@pytest.mark.parametrize("stream", [False, True])
def test_exhausted_retries_give_plain_text_never_a_broken_call(stream: bool) -> None:
    with run_forge(guardrails=GuardrailSettings(max_retries=1)) as forge:
        forge.backend.push(
            reply_tool_call("get_weather", {"city": 1}),
            reply_tool_call("get_weather", {"city": 2}),
        )
        message = final(forge, stream, **ask(tools=[WEATHER]))
        assert [b.type for b in message.content] == ["text"]
        assert message.content[0].text.startswith("[forge] The model did not produce")
        assert message.stop_reason == "end_turn"
        assert len(forge.backend.requests) == 2


@pytest.mark.parametrize("stream", [False, True])
def test_respond_tool_answers_become_text(stream: bool) -> None:
    with run_forge(guardrails=GuardrailSettings(inject_respond_tool=True)) as forge:
        forge.backend.push(reply_tool_call("respond", {"message": "Hello! How can I help?"}))
        message = final(forge, stream, **ask("hi", tools=[WEATHER]))
        assert [(b.type, b.text) for b in message.content] == [("text", "Hello! How can I help?")]
        assert message.stop_reason == "end_turn"
        sent_tools = [t["function"]["name"] for t in forge.last["tools"]]
        assert sent_tools == ["get_weather", "respond"]


@pytest.mark.parametrize("stream", [False, True])
def test_constrained_retry_with_the_llamafile_client(stream: bool) -> None:
    # The llamafile plugin constrains a retry with a GBNF grammar for the tool (tools removed,
    # since llama-server refuses a grammar next to tools, and described in the system message
    # instead); the JSON answer becomes a tool_use.
    with run_forge(llamafile=True) as forge:
        forge.backend.push(
            reply_text("The weather is nice."),
            reply_text('{"name": "get_weather", "arguments": {"city": "Lyon"}}'),
        )
        message = final(forge, stream, **ask(tools=[WEATHER], tool_choice={"type": "any"}))
        assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
            ("tool_use", {"city": "Lyon"})
        ]
        retry = forge.backend.requests[1]
        assert "tools" not in retry and "tool_choice" not in retry
        assert "response_format" not in retry
        grammar = retry["grammar"]
        assert grammar.startswith("root ::= call-get-weather")
        assert '{\\"name\\":\\"get_weather\\",\\"arguments\\":' in grammar
        assert '"\\"city\\":" string' in grammar  # the required argument, as a string
        system = retry["messages"][0]
        assert system["role"] == "system" and "get_weather" in system["content"]
        assert "city (string, required)" in system["content"]
        assert forge.backend.requests[0]["model"] == MODEL


def test_constrained_retry_with_constrain_with_schema() -> None:
    # --constrain-with schema: the retry carries the tool as a JSON schema instead.
    with run_forge(llamafile=True, llamafile_options={"constrain_with": "schema"}) as forge:
        forge.backend.push(
            reply_text("The weather is nice."),
            reply_text('{"name": "get_weather", "arguments": {"city": "Lyon"}}'),
        )
        message = final(forge, False, **ask(tools=[WEATHER], tool_choice={"type": "any"}))
        assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
            ("tool_use", {"city": "Lyon"})
        ]
        retry = forge.backend.requests[1]
        assert "tools" not in retry and "grammar" not in retry
        assert retry["response_format"]["type"] == "json_schema"
        schema = retry["response_format"]["json_schema"]["schema"]
        assert schema["properties"]["name"] == {"const": "get_weather"}
        assert schema["properties"]["arguments"] == WEATHER["input_schema"]
