"""Hypothesis fuzzing through the ASGI app: client bodies (both endpoints and count_tokens) and
backend outputs (bodies and event streams of every wire), with and without tools.

Whatever goes in, what comes out is never a 500, never empty, always valid UTF-8 JSON in the
client's shape or an SSE stream that ends properly, and no tool call that fails validation
reaches the client. Example counts are kept small: the whole file runs in well under a minute
on two cores.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from robustness_support import (
    PROTOCOLS,
    WIRES,
    Raw,
    Rig,
    assert_calls_valid,
    check_response,
    deep,
    encode,
    endpoint,
    good_answer,
    mutate,
    paths,
    render,
    request_body,
    rig,
)

FUZZ = settings(
    max_examples=int(os.environ.get("FORGE_FUZZ_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- JSON-ish values, including what Python's json module gets wrong ------------------------------

PIECES = ["a", "é", "\ud800", "\udfff", "\ud83d", "😀", "<tool_call>", "{", '"', "\\", "\n",
          "\x00", "[TOOL_CALLS]", "```json"]
# Half an emoji somewhere in most generated text: what a Node client cutting a string sends.
texts = st.one_of(
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join),
    st.tuples(st.text(max_size=8), st.sampled_from(["\ud800", "\udc00", "\ud83d"])).map("".join),
    st.text(max_size=10),
)
specials = st.sampled_from([
    Raw("NaN"), Raw("-Infinity"), Raw("1e400"), Raw("-0"), Raw("1" * 5000), Raw("1" * 300),
    Raw('"\\ud800"'), Raw('"\\udc00\\ud800"'), deep(200), deep(1500), Raw('{"a":' * 300 + "1"
    + "}" * 300),
])
plain = st.one_of(
    texts, st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
)


def trees(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3), st.dictionaries(texts, children, max_size=3)
        ),
        max_leaves=8,
    )


values = trees(st.one_of(specials, plain))
"""Any value, including what must be refused (NaN, 1e400, deep nesting)."""
valid_values = trees(plain)
"""Any value JSON can carry: what gets past the reader and on to the parsers and plugins."""

OPENAI_FIELDS = ["model", "messages", "tools", "tool_choice", "stream", "stream_options",
                 "temperature", "max_tokens", "stop", "n", "response_format", "top_p", "seed",
                 "parallel_tool_calls", "reasoning_effort", "user", "logprobs"]
ANTHROPIC_FIELDS = ["model", "messages", "max_tokens", "system", "tools", "tool_choice",
                    "stream", "stop_sequences", "temperature", "top_k", "thinking", "metadata"]


@st.composite
def mutations(draw: st.DrawFn, tree: Any, fields: list[str]) -> Any:
    """``tree`` with one to three nodes (or known top-level fields) replaced by any value."""
    out = tree
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["path", "field"]))
        if where == "field" and isinstance(out, dict):
            out = mutate(out, (draw(st.sampled_from(fields)),), draw(values))
        else:
            candidates = paths(out)
            out = mutate(out, draw(st.sampled_from(candidates)), draw(values))
    return out


@st.composite
def client_bodies(draw: st.DrawFn, base: dict[str, Any], fields: list[str]) -> Any:
    """Mostly a valid request with odd optional fields (so it reaches the backend), else a
    request broken anywhere, else any value at all."""
    mode = draw(st.sampled_from(["options", "options", "options", "anywhere", "anywhere", "any"]))
    if mode == "any":
        return draw(values)
    if mode == "anywhere":
        return draw(mutations(base, fields))
    body = dict(base)
    optional = [f for f in fields if f not in ("model", "messages")]
    for name in draw(st.lists(st.sampled_from(optional), min_size=1, max_size=3, unique=True)):
        body[name] = draw(valid_values)
    return body


# --- one forge per wire, reused across examples -----------------------------------------------


class Loop:
    """A rig on an event loop of its own, so sync hypothesis tests can drive it per example."""

    def __init__(self, wire: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._cm = rig(wire)
        self.rig: Rig = self.loop.run_until_complete(self._cm.__aenter__())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.run_until_complete(self._cm.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture(params=WIRES)
def forge(request: pytest.FixtureRequest) -> Iterator[Loop]:
    loop = Loop(request.param)
    try:
        yield loop
    finally:
        loop.close()


def post(forge: Loop, path: str, body: bytes) -> Any:
    return forge.run(
        forge.rig.http.post(path, content=body, headers={"content-type": "application/json"})
    )


def offered(body: Any, protocol: str) -> bool:
    """Whether the (possibly mutated) body still offers the get_weather tool intact."""
    tools = body.get("tools") if isinstance(body, dict) else None
    expected = request_body(protocol, stream=False, tools=True)["tools"]
    return tools == expected


# --- client bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@FUZZ
@given(data=st.data(), stream=st.booleans(), tools=st.booleans())
def test_fuzzed_client_bodies(
    forge: Loop, protocol: str, data: st.DataObject, stream: bool, tools: bool
) -> None:
    base = request_body(protocol, stream=stream, tools=tools)
    fields = ANTHROPIC_FIELDS if protocol == "anthropic" else OPENAI_FIELDS
    body = data.draw(client_bodies(base, fields), label="body")
    forge.rig.answer_good(tools=True)  # a valid call; it may not survive a mutated schema
    outcome = check_response(protocol, post(forge, endpoint(protocol), render(body).encode()))
    if offered(body, protocol):
        assert_calls_valid(outcome, True)
    else:
        for name, arguments in outcome.calls:  # whatever the tools became: an object
            assert isinstance(json.loads(arguments or "{}"), dict), (name, arguments)


@FUZZ
@given(data=st.data(), tools=st.booleans())
def test_fuzzed_count_tokens_bodies(forge: Loop, data: st.DataObject, tools: bool) -> None:
    base = request_body("anthropic", stream=False, tools=tools)
    del base["max_tokens"]
    body = data.draw(client_bodies(base, ANTHROPIC_FIELDS), label="body")
    forge.rig.answer(b'{"input_tokens": 7}')
    response = post(forge, "/v1/messages/count_tokens", render(body).encode())
    outcome = check_response("anthropic", response, count_tokens=True)
    assert outcome.status in (200, 400, 404, 413)


# --- backend outputs --------------------------------------------------------------------------

GARBAGE = st.sampled_from([
    Raw("{oops"), Raw("[1,2]"), Raw("null"), Raw('"text"'), Raw("NaN"), deep(3000),
    Raw('{"error": {"message": "boom \\ud800"}}'), Raw("{}"),
])


@st.composite
def backend_answers(draw: st.DrawFn, wire: str, stream: bool, tools: bool) -> Any:
    """The wire's good answer, broken: nodes replaced, events inserted, dropped or cut."""
    answer = good_answer(wire, stream=stream, tools=tools)
    answer = draw(mutations(answer, ["x_extra"]))
    if stream and isinstance(answer, list):
        answer = copy.copy(answer)
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(["insert", "drop", "cut"]))
            if kind == "insert":
                answer.insert(draw(st.integers(0, len(answer))), draw(GARBAGE | values))
            elif answer and kind == "drop":
                answer.pop(draw(st.integers(0, len(answer) - 1)))
            elif answer:
                answer = answer[: draw(st.integers(0, len(answer)))]
    return answer


@pytest.mark.parametrize("protocol", PROTOCOLS)
@FUZZ
@given(data=st.data(), stream=st.booleans(), tools=st.booleans(), calls=st.booleans())
def test_fuzzed_backend_outputs(
    forge: Loop, protocol: str, data: st.DataObject, stream: bool, tools: bool, calls: bool
) -> None:
    """``calls``: the answer holds a tool call, whether or not the request offered tools."""
    wire = forge.rig.wire
    answer = data.draw(backend_answers(wire, stream, calls), label="answer")
    if not stream or isinstance(answer, list):
        forge.rig.answer(*encode(wire, answer, stream=stream))
    else:  # a stream answered with one JSON value instead of events
        forge.rig.answer(render(answer).encode())
    body = render(request_body(protocol, stream=stream, tools=tools)).encode()
    outcome = check_response(protocol, post(forge, endpoint(protocol), body))
    assert_calls_valid(outcome, tools)  # without tools, no call may reach the client


@FUZZ
@given(body=st.binary(max_size=64) | values.map(lambda v: render(v).encode()),
       tools=st.booleans())
def test_fuzzed_raw_backend_bytes(forge: Loop, body: bytes, tools: bool) -> None:
    """Any bytes at all from the backend, streamed or not."""
    for stream in (False, True):
        forge.rig.answer(body, "text/event-stream" if stream else "application/json")
        request = render(request_body("openai", stream=stream, tools=tools)).encode()
        outcome = check_response("openai", post(forge, "/v1/chat/completions", request))
        assert_calls_valid(outcome, tools)
