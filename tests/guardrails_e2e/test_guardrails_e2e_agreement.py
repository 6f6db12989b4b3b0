"""Streamed and non-streamed answers agree: the same scripted backend output, chunked at
random, gives the same final message, the same retry requests, and never a broken call."""

from __future__ import annotations

import json
from typing import Any

from guardrails_e2e_support import TOOLS, assemble, message_calls
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forge_core.config import GuardrailSettings
from forge_core.guardrails.validate import ToolIndex, validate_turn
from forge_core.testing import Reply, ScriptedBackend, chat, forge_client
from forge_core.turns import AssistantTurn, ToolCall

URL = "/v1/chat/completions"
GUARD = GuardrailSettings(max_retries=2)
ATTEMPTS = GUARD.max_retries + 1

NAMES = st.sampled_from(["get_weather", "search", "nope"])
ARGS = st.sampled_from([
    {"city": "Paris"}, {"city": "Oslo", "unit": "c"}, {"city": 5}, {"query": "x"},
    {"query": "", "limit": 3}, {},
])


@st.composite
def printed_call(draw: st.DrawFn) -> str:
    name, args = draw(NAMES), draw(ARGS)
    body = json.dumps({"name": name, "arguments": args})
    form = draw(st.sampled_from(["hermes", "fenced", "bare", "mistral", "llama3", "xml"]))
    if form == "hermes":
        return f"<tool_call>\n{body}\n</tool_call>"
    if form == "fenced":
        return f"```json\n{body}\n```"
    if form == "bare":
        return f"\n{body}"
    if form == "mistral":
        return f"[TOOL_CALLS][{body}]"
    if form == "llama3":
        return "<|python_tag|>" + json.dumps({"name": name, "parameters": args})
    params = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in args.items())
    return f"<function={name}>\n{params}</function>"


PROSE = st.sampled_from([
    "Sure. ", "Let me check.\n", "a set {1,2} and [x] ", "```python\nprint(1)\n```\n",
    "The answer is 42.", "{not json} ", "<b>bold</b> ", "\n", "`code` ",
    '{"name": "get_weather"} is a tool name. ', "<think>hmm</think>",
])
CONTENT = st.lists(st.one_of(PROSE, printed_call()), max_size=3).map("".join)
RAW_ARGS = st.one_of(ARGS.map(json.dumps), st.sampled_from(['{"city": "Par', "[1]", ""]))


@st.composite
def answer(draw: st.DrawFn) -> dict[str, Any]:
    calls = draw(st.lists(st.tuples(NAMES, RAW_ARGS), max_size=2))
    return {
        "content": draw(CONTENT),
        "reasoning": draw(st.sampled_from(["", "thinking..."])),
        "calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)
        ],
        "finish": draw(st.sampled_from(["stop", "length", "tool_calls"])),
        "cuts": draw(st.lists(st.integers(1, 12), min_size=1, max_size=6)),
    }


def chunked(text: str, cuts: list[int]) -> list[str]:
    pieces, i, k = [], 0, 0
    while i < len(text):
        step = cuts[k % len(cuts)]
        pieces.append(text[i : i + step])
        i, k = i + step, k + 1
    return pieces


def reply_of(spec: dict[str, Any]) -> Reply:
    message: dict[str, Any] = {"role": "assistant", "content": spec["content"] or None}
    if spec["calls"]:
        message["tool_calls"] = spec["calls"]
    if spec["reasoning"]:
        message["reasoning_content"] = spec["reasoning"]
    chunks: list[dict[str, Any] | str] = [{"role": "assistant", "content": ""}]
    if spec["reasoning"]:
        chunks.append({"reasoning_content": spec["reasoning"]})
    chunks += [{"content": piece} for piece in chunked(spec["content"], spec["cuts"])]
    for index, call in enumerate(spec["calls"]):
        args = call["function"]["arguments"]
        half = len(args) // 2
        chunks.append({"tool_calls": [{
            "index": index, "id": call["id"], "type": "function",
            "function": {"name": call["function"]["name"], "arguments": args[:half]},
        }]})
        chunks.append({"tool_calls": [{"index": index, "function": {"arguments": args[half:]}}]})
    return Reply(message=message, finish_reason=spec["finish"], stream_chunks=chunks)


def without_ids(requests: list[dict[str, Any]]) -> list[Any]:
    """Retry requests with the transport fields and the (fresh, random) call ids removed."""
    out = []
    for request in requests:
        body = {k: v for k, v in request.items() if k not in ("stream", "stream_options")}
        messages = []
        for message in body["messages"]:
            message = dict(message)
            if message.get("tool_calls"):
                message["tool_calls"] = [{**c, "id": "ID"} for c in message["tool_calls"]]
            if "tool_call_id" in message:
                message["tool_call_id"] = "ID"
            messages.append(message)
        out.append({**body, "messages": messages})
    return out


CHOICES = st.sampled_from(
    [None, "auto", "required", "none", {"type": "function", "function": {"name": "search"}}]
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(answer(), min_size=ATTEMPTS, max_size=ATTEMPTS), CHOICES)
async def test_stream_and_non_stream_give_the_same_final_message(
    script: list[dict[str, Any]], tool_choice: Any
) -> None:
    body = chat(tools=TOOLS) if tool_choice is None else chat(tools=TOOLS, tool_choice=tool_choice)

    plain = ScriptedBackend().push(*(reply_of(s) for s in script))
    async with forge_client(plain, guardrails=GUARD) as http:
        r = await http.post(URL, json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    message = data["choices"][0]["message"]

    streamed = ScriptedBackend().push(*(reply_of(s) for s in script))
    async with forge_client(streamed, guardrails=GUARD) as http:
        s = await http.post(URL, json={**body, "stream": True})
    assert s.status_code == 200, s.text
    out = assemble(s.text)

    # One well-formed stream: one role, one finish_reason, no error.
    assert out.roles == 1 and out.done == 1 and not out.errors
    assert out.finish_reasons == [data["choices"][0]["finish_reason"]]
    # The same final message.
    assert out.content == (message["content"] or "")
    assert out.reasoning == message.get("reasoning_content", "")
    plain_calls = [(c["name"], c["arguments"]) for c in message_calls(message)]
    assert [(c["name"], c["arguments"]) for c in out.tool_calls] == plain_calls
    # The same backend requests, retries included.
    assert without_ids(streamed.requests) == without_ids(plain.requests)
    # Never a broken call.
    turn = AssistantTurn(tool_calls=[
        ToolCall(c["id"], c["name"], c["arguments"]) for c in message_calls(message)
    ])
    problems = validate_turn(turn, ToolIndex(TOOLS), tool_choice)
    if turn.tool_calls:
        assert problems == [] and data["choices"][0]["finish_reason"] == "tool_calls"
    else:
        assert data["choices"][0]["finish_reason"] in ("stop", "length")
