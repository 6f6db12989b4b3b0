"""The bad-input matrix: every class of bad input, from the client or from the backend, over
both client protocols, streamed and not, with and without tools, on every backend wire (the
shared OpenAI-wire client, Ollama's NDJSON, the Anthropic Messages plugin).

Bad client input gets a 400 in the client's shape before any backend request; a broken
backend answer gets a 502 naming the backend (or, once a stream has started, an in-stream
error event and a proper end); a lone surrogate is never a crash but U+FFFD. Nothing is ever
a 500, an empty body, invalid UTF-8 or invalid JSON.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from robustness_support import (
    PROTOCOLS,
    WIRES,
    Outcome,
    Raw,
    assert_calls_valid,
    backend_named,
    check_response,
    deep,
    endpoint,
    good_answer,
    mutate,
    render,
    request_body,
    rig,
)

from forge_core.budget import ContextBudget

STREAMED = pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
TOOLS = pytest.mark.parametrize("tools", [False, True], ids=["no-tools", "tools"])
PROTOCOL = pytest.mark.parametrize("protocol", PROTOCOLS)
WIRE = pytest.mark.parametrize("wire", WIRES)

SURROGATE_TEXT = "caf\ud800e \udc00!"  # render() writes these as \ud800 and \udc00 escapes
CLEANED_TEXT = "caf\ufffde \ufffd!"


async def ask(protocol: str, r: Any, body: bytes) -> Outcome:
    response = await r.http.post(
        endpoint(protocol), content=body, headers={"content-type": "application/json"}
    )
    return check_response(protocol, response)


def sent_text(sent: bytes) -> str:
    """A request forge sent to a backend, as text: valid UTF-8 JSON, non-ASCII unescaped."""
    return json.dumps(json.loads(sent.decode("utf-8")), ensure_ascii=False)


# --- bad client input ---------------------------------------------------------------------------


def client_case(case: str, protocol: str, *, stream: bool, tools: bool) -> bytes:
    body = request_body(protocol, stream=stream, tools=tools)
    schema_key = "input_schema" if protocol == "anthropic" else "parameters"
    tool = body["tools"][0] if tools else None
    schema = (tool[schema_key] if protocol == "anthropic" else tool["function"][schema_key]) \
        if tool else None
    if case == "lone_surrogate":
        body["messages"][0]["content"] = SURROGATE_TEXT
        if tool is not None:
            schema["properties"]["city"]["description"] = SURROGATE_TEXT
    elif case == "deep_nesting":
        if schema is not None:
            schema["properties"]["city"]["examples"] = deep()
        else:
            body["metadata_extra"] = deep()
    elif case == "nan":
        body["temperature"] = Raw("NaN")
    elif case == "infinity":
        body["temperature"] = Raw("-Infinity")
    elif case == "huge_number":
        body["temperature"] = Raw("1e400")
    elif case == "text_part_not_string":
        body["messages"][0]["content"] = [{"type": "text", "text": 5}]
    return render(body).encode()


CLIENT_REFUSALS = {
    "deep_nesting": "nested deeper than the limit of 128 levels",
    "nan": "NaN is not a JSON number",
    "infinity": "-Infinity is not a JSON number",
    "huge_number": "1e400 is out of range",
    "text_part_not_string": "text",
}


@WIRE
@TOOLS
@STREAMED
@PROTOCOL
@pytest.mark.parametrize("case", sorted(CLIENT_REFUSALS))
async def test_bad_client_input_is_a_400_in_the_clients_shape(
    case: str, protocol: str, stream: bool, tools: bool, wire: str
) -> None:
    async with rig(wire) as r:
        r.answer_tree(good_answer(wire, stream=stream, tools=tools), stream=stream)
        outcome = await ask(protocol, r, client_case(case, protocol, stream=stream, tools=tools))
    assert outcome.status == 400 and not outcome.streamed
    assert outcome.error is not None and CLIENT_REFUSALS[case] in outcome.error
    assert r.sent == []  # refused before any backend request


@WIRE
@TOOLS
@STREAMED
@PROTOCOL
async def test_a_lone_surrogate_from_the_client_becomes_u_fffd(
    protocol: str, stream: bool, tools: bool, wire: str
) -> None:
    async with rig(wire) as r:
        r.answer_tree(good_answer(wire, stream=stream, tools=tools), stream=stream)
        outcome = await ask(
            protocol, r, client_case("lone_surrogate", protocol, stream=stream, tools=tools)
        )
    assert outcome.status == 200 and outcome.streamed == stream
    assert outcome.text == "Hello there"
    assert_calls_valid(outcome, tools)
    assert len(outcome.calls) == (1 if tools else 0)
    assert r.sent, "the backend was asked"
    for sent in r.sent:
        assert CLEANED_TEXT in sent_text(sent)


COUNT_CASES = {
    "lone_surrogate": 200,
    "deep_nesting": 400,
    "nan": 400,
    "huge_number": 400,
    "text_part_not_string": 400,
}


@WIRE
@TOOLS
@pytest.mark.parametrize("case", sorted(COUNT_CASES))
async def test_count_tokens_never_crashes(case: str, tools: bool, wire: str) -> None:
    raw = client_case(case, "anthropic", stream=False, tools=tools)
    async with rig(wire) as r:
        r.answer(b'{"input_tokens": 21}')  # the Anthropic wire asks its backend to count
        response = await r.http.post(
            "/v1/messages/count_tokens", content=raw, headers={"content-type": "application/json"}
        )
    outcome = check_response("anthropic", response, count_tokens=True)
    assert outcome.status == COUNT_CASES[case]
    if outcome.status == 200:
        tokens = outcome.body["input_tokens"]
        assert isinstance(tokens, int) and tokens > 0
        if wire == "anthropic":
            assert tokens == 21 and CLEANED_TEXT in sent_text(r.sent[-1])


async def test_budget_check_ignores_a_non_string_text_part() -> None:
    """The context-budget check counts only string text; another part is the backend's call."""
    body = request_body("openai", stream=False, tools=False)
    body["messages"][0]["content"] = [
        {"type": "text", "text": "What is in this file?"},
        {"type": "input_file", "text": 12345, "file_id": "file-1"},
    ]
    async with rig("openai") as r:
        r.state.budget = ContextBudget("manual", 16)  # the check runs on every request
        r.answer_tree(good_answer("openai", stream=False, tools=False), stream=False)
        outcome = await ask("openai", r, render(body).encode())
    assert outcome.status == 200 and outcome.text == "Hello there"
    assert json.loads(r.sent[0])["messages"][0]["content"][1]["text"] == 12345


# --- bad backend output -------------------------------------------------------------------------

# Where each wire's answer (one body, or a list of stream events) carries things.
TEXT_AT = {
    ("openai", False): ("choices", 0, "message", "content"),
    ("openai", True): (1, "choices", 0, "delta", "content"),
    ("ollama", False): ("message", "content"),
    ("ollama", True): (1, "message", "content"),
    ("anthropic", False): ("content", 0, "text"),
    ("anthropic", True): (3, "delta", "text"),
}
COUNT_AT = {
    ("openai", False): ("usage", "prompt_tokens"),
    ("openai", True): (-1, "usage", "prompt_tokens"),
    ("ollama", False): ("eval_count",),
    ("ollama", True): (-1, "eval_count"),
    ("anthropic", False): ("usage", "output_tokens"),
    ("anthropic", True): (-2, "usage", "output_tokens"),
}
WRONG_TYPE_AT = {  # the container the wire promises, replaced by something else
    ("openai", False): (("choices",), ["x"]),
    ("openai", True): ((1, "choices"), ["x"]),
    ("ollama", False): (("message",), "x"),
    ("ollama", True): ((1, "message"), "x"),
    ("anthropic", False): (("content",), ["x"]),
    ("anthropic", True): ((3, "delta"), "x"),
}
CALLS_AT = {  # where the tool calls list sits: replaced by the number 5
    ("openai", False): ("choices", 0, "message", "tool_calls"),
    ("openai", True): (1, "choices", 0, "delta", "tool_calls"),
    ("ollama", False): ("message", "tool_calls"),
    ("ollama", True): (1, "message", "tool_calls"),
    ("anthropic", False): ("content",),
    ("anthropic", True): (3, "index"),
}
ARGS_AT = {  # the city argument of the good call (text on the OpenAI wire, objects elsewhere)
    ("openai", False): ("choices", 0, "message", "tool_calls", 0, "function", "arguments"),
    ("openai", True): (2, "choices", 0, "delta", "tool_calls", 0, "function", "arguments"),
    ("ollama", False): ("message", "tool_calls", 0, "function", "arguments", "city"),
    ("ollama", True): (2, "message", "tool_calls", 0, "function", "arguments", "city"),
    ("anthropic", False): ("content", 1, "input", "city"),
    ("anthropic", True): (6, "delta", "partial_json"),
}


def broken(case: str, wire: str, *, stream: bool, tools: bool) -> Any:
    answer = good_answer(wire, stream=stream, tools=tools)
    key = (wire, stream)
    if case == "lone_surrogate_text":
        return mutate(answer, TEXT_AT[key], "\ud83dthere")  # half an emoji, then text
    if case == "lone_surrogate_arguments":
        text_args = wire == "openai" or key == ("anthropic", True)
        value = '{"city": "Par\\ud800is"}' if text_args else "Par\ud800is"
        return mutate(answer, ARGS_AT[key], value)
    if case == "deep_nesting":
        return mutate(answer, (1, "x_deep") if stream else ("x_deep",), deep())
    if case == "nan":
        return mutate(answer, COUNT_AT[key], Raw("NaN"))
    if case == "huge_number":
        return mutate(answer, COUNT_AT[key], Raw("1e999"))
    if case == "wrong_inner_type":
        path, value = WRONG_TYPE_AT[key]
        return mutate(answer, path, value)
    if case == "text_part_not_string":
        value: Any = [{"type": "text", "text": 5}] if wire == "openai" else 5
        return mutate(answer, TEXT_AT[key], value)
    if case == "tool_calls_not_a_list":
        return mutate(answer, CALLS_AT[key], 5 if key != ("anthropic", True) else "five")
    if case == "not_json":
        return mutate(answer, (1,), Raw("{oops")) if stream else Raw("<html>oops</html>")
    raise AssertionError(case)


BACKEND_FAILURES = (
    "deep_nesting",
    "nan",
    "huge_number",
    "wrong_inner_type",
    "text_part_not_string",
    "tool_calls_not_a_list",
    "not_json",
)


@WIRE
@TOOLS
@STREAMED
@PROTOCOL
@pytest.mark.parametrize("case", BACKEND_FAILURES)
async def test_a_broken_backend_answer_is_a_backend_error(
    case: str, protocol: str, stream: bool, tools: bool, wire: str
) -> None:
    async with rig(wire) as r:
        r.answer_tree(broken(case, wire, stream=stream, tools=tools), stream=stream)
        body = render(request_body(protocol, stream=stream, tools=tools)).encode()
        outcome = await ask(protocol, r, body)
    assert outcome.error is not None, outcome
    assert outcome.error.startswith(backend_named(wire)), outcome.error
    if outcome.streamed:  # the stream had started: an error event, then its proper end
        assert outcome.status == 200
    else:
        assert outcome.status == 502
    assert_calls_valid(outcome, tools)


@WIRE
@TOOLS
@STREAMED
@PROTOCOL
async def test_a_lone_surrogate_from_the_backend_becomes_u_fffd(
    protocol: str, stream: bool, tools: bool, wire: str
) -> None:
    async with rig(wire) as r:
        r.answer_tree(broken("lone_surrogate_text", wire, stream=stream, tools=tools),
                      stream=stream)
        outcome = await ask(protocol, r, render(request_body(
            protocol, stream=stream, tools=tools)).encode())
    assert outcome.status == 200 and outcome.error is None
    # Streamed, the broken piece is the second one, after "Hello ".
    assert outcome.text == ("Hello \ufffdthere" if stream else "\ufffdthere")
    assert_calls_valid(outcome, tools)


@WIRE
@STREAMED
@PROTOCOL
async def test_a_lone_surrogate_in_tool_arguments_becomes_u_fffd(
    protocol: str, stream: bool, wire: str
) -> None:
    async with rig(wire) as r:
        r.answer_tree(broken("lone_surrogate_arguments", wire, stream=stream, tools=True),
                      stream=stream)
        outcome = await ask(protocol, r, render(request_body(
            protocol, stream=stream, tools=True)).encode())
    assert outcome.status == 200 and outcome.error is None
    assert_calls_valid(outcome, True)
    assert [(name, json.loads(args)) for name, args in outcome.calls] == [
        ("get_weather", {"city": "Par\ufffdis"})
    ]


@WIRE
@STREAMED
@PROTOCOL
async def test_a_call_to_a_tool_nobody_offered_never_reaches_the_client(
    protocol: str, stream: bool, wire: str
) -> None:
    async with rig(wire) as r:
        r.answer_tree(good_answer(wire, stream=stream, tools=True), stream=stream)
        outcome = await ask(protocol, r, render(request_body(
            protocol, stream=stream, tools=False)).encode())
    assert outcome.status == 200
    assert_calls_valid(outcome, False)


WRONG_FIELDS = {  # fields a backend translation converts: a wrong type is the client's 400
    "max_tokens": ("max_tokens", "abc"),
    "max_completion_tokens": ("max_completion_tokens", [1]),
    "stop": ("stop", 5),
    "tool_choice": ("tool_choice", {"type": "function", "function": "get_weather"}),
    "history_call": ("messages", [{"role": "assistant", "content": None,
                                   "tool_calls": [{"id": "c1", "function": "get_weather"}]},
                                  {"role": "user", "content": "Hi"}]),
}


@WIRE
@pytest.mark.parametrize("case", sorted(WRONG_FIELDS))
async def test_openai_fields_of_the_wrong_type_are_refused_at_the_edge(
    case: str, wire: str
) -> None:
    field, value = WRONG_FIELDS[case]
    body = {**request_body("openai", stream=False, tools=True), field: value}
    async with rig(wire) as r:
        r.answer_tree(good_answer(wire, stream=False, tools=True), stream=False)
        outcome = await ask("openai", r, render(body).encode())
    assert outcome.status == 400, outcome
    assert outcome.body["error"]["param"].startswith(field)
    assert r.sent == []
