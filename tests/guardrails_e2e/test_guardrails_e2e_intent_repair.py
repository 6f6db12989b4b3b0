"""Issue 10 part B through the app, against the fake backend: tool intent under auto, repair
before retrying, calls cut by max_tokens, calls in reasoning, llama-server parse failures,
Gemma 4 and typed XML values. Streamed and non-streamed answers must agree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from guardrails_e2e_support import TOOLS, assemble, last_messages, llamafile_state

from forge_core.config import GuardrailSettings
from forge_core.testing import (
    Reply,
    ScriptedBackend,
    chat,
    forge_client,
    reply_error,
    reply_text,
    reply_tool_call,
)

URL = "/v1/chat/completions"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "llama_server"
PARIS = {"city": "Paris"}
WRITE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "write_file",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
}


async def ask(backend: ScriptedBackend, body: dict[str, Any], **kw: Any) -> tuple[int, Any, str]:
    async with forge_client(backend, **kw) as http:
        r = await http.post(URL, json=body)
    return r.status_code, r.json(), r.headers.get("x-forge-guardrail", "")


async def ask_stream(backend: ScriptedBackend, body: dict[str, Any], **kw: Any) -> Any:
    async with forge_client(backend, **kw) as http:
        r = await http.post(URL, json={**body, "stream": True})
    return assemble(r.text)


def message(data: dict[str, Any]) -> dict[str, Any]:
    return data["choices"][0]["message"]


def calls_of(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in message(data).get("tool_calls") or []
    ]


# --- tool intent under auto ---------------------------------------------------------------------


INTENT = "You can use the `get_weather` function to check the weather in Paris."


async def test_prose_that_tries_to_use_a_tool_is_retried_under_auto() -> None:
    backend = ScriptedBackend().push(reply_text(INTENT), reply_tool_call("get_weather", PARIS))
    status, data, header = await ask(backend, chat("Weather in Paris?", tools=TOOLS))
    assert status == 200 and calls_of(data) == [("get_weather", PARIS)]
    assert header.startswith("retry:tool_intent")
    assert message(data)["content"] in (None, "", "You can use the ")
    correction = last_messages(backend.requests[1], 1)[0]["content"]
    assert "describes using tool 'get_weather' instead of calling it" in correction


async def test_streamed_intent_retry_never_shows_the_intent_text() -> None:
    backend = ScriptedBackend().push(reply_text(INTENT), reply_tool_call("get_weather", PARIS))
    out = await ask_stream(backend, chat("Weather in Paris?", tools=TOOLS))
    assert "`get_weather`" not in out.content
    assert out.finish_reasons == ["tool_calls"]
    assert [(c["name"], json.loads(c["arguments"])) for c in out.tool_calls] == [
        ("get_weather", PARIS)
    ]


async def test_prose_stays_prose_with_auto_intent() -> None:
    text = "Hello! I can look up the weather or search the web for you."
    backend = ScriptedBackend().push(reply_text(text))
    status, data, header = await ask(backend, chat("hi", tools=TOOLS))
    assert status == 200 and message(data)["content"] == text and header == ""
    assert len(backend.requests) == 1


async def test_after_a_tool_result_prose_is_the_final_answer() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C, sunny"},
    ]
    text = "The `get_weather` tool says it is 18C and sunny in Paris."
    backend = ScriptedBackend().push(reply_text(text))
    body = {"model": "fake-model", "messages": messages, "tools": TOOLS}
    status, data, _ = await ask(backend, body)
    assert status == 200 and message(data)["content"] == text and len(backend.requests) == 1


async def test_auto_intent_off_accepts_the_prose() -> None:
    backend = ScriptedBackend().push(reply_text(INTENT))
    status, data, _ = await ask(
        backend, chat("Weather in Paris?", tools=TOOLS),
        guardrails=GuardrailSettings(auto_intent=False),
    )
    assert status == 200 and message(data)["content"] == INTENT and len(backend.requests) == 1


async def test_exhausted_intent_retries_give_the_prose_not_a_call() -> None:
    backend = ScriptedBackend().push(*[reply_text(INTENT) for _ in range(3)])
    status, data, header = await ask(
        backend, chat("Weather in Paris?", tools=TOOLS),
        guardrails=GuardrailSettings(max_retries=2),
    )
    assert status == 200 and not message(data).get("tool_calls")
    assert "get_weather" in message(data)["content"]
    assert "retries-exhausted:tool_intent" in header


# --- repair before retrying ------------------------------------------------------------------


async def test_repairable_arguments_save_the_retry() -> None:
    backend = ScriptedBackend().push(reply_tool_call("search", "{'query': 'cats', 'limit': '3'}"))
    status, data, header = await ask(backend, chat(tools=TOOLS))
    assert status == 200 and len(backend.requests) == 1
    assert calls_of(data) == [("search", {"query": "cats", "limit": 3})]
    assert header == "repaired:json+types"


async def test_arguments_cut_by_length_are_retried_not_repaired() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("get_weather", '{"city": "Paris"', finish_reason="length"),
        reply_tool_call("get_weather", PARIS),
    )
    status, data, header = await ask(backend, chat(tools=TOOLS))
    assert len(backend.requests) == 2 and header.startswith("retry:invalid_json")
    assert calls_of(data) == [("get_weather", PARIS)]


# --- markup cut at max_tokens -----------------------------------------------------------------


async def test_xml_call_cut_by_max_tokens_is_retried_not_rescued() -> None:
    cut = (
        "<function=write_file>\n<parameter=path>\nnotes.txt\n</parameter>\n"
        "<parameter=content>\nHel"
    )
    backend = ScriptedBackend().push(
        reply_text(cut, finish_reason="length"),
        reply_tool_call("write_file", {"path": "notes.txt", "content": "Hello"}),
    )
    body = chat("write hello", tools=[WRITE_TOOL], tool_choice="required")
    status, data, header = await ask(backend, body)
    assert calls_of(data) == [("write_file", {"path": "notes.txt", "content": "Hello"})]
    assert "retry:" in header and "truncated" in header
    assert "cut off by max_tokens" in json.dumps(backend.requests[1]["messages"])


async def test_json_cut_by_max_tokens_under_auto_is_not_returned_as_prose() -> None:
    cut = '{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Par'
    backend = ScriptedBackend().push(
        reply_text(cut, finish_reason="length"), reply_tool_call("get_weather", PARIS)
    )
    status, data, header = await ask(backend, chat(tools=TOOLS))
    assert calls_of(data) == [("get_weather", PARIS)] and "truncated" in header
    assert '"name"' not in (message(data)["content"] or "")


# --- calls written inside reasoning --------------------------------------------------------------


REASONED = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


async def test_call_in_reasoning_content_is_rescued_when_the_content_is_empty() -> None:
    reply = Reply(message={"role": "assistant", "content": "", "reasoning_content": REASONED})
    backend = ScriptedBackend().push(reply)
    status, data, header = await ask(backend, chat(tools=TOOLS))
    assert calls_of(data) == [("get_weather", PARIS)] and header == "rescued:hermes:reasoning"


async def test_call_in_a_think_block_is_rescued_and_streams_alike() -> None:
    text = f"<think>\nI should call the tool.\n{REASONED}\n</think>"
    backend = ScriptedBackend().push(reply_text(text), reply_text(text))
    body = chat(tools=TOOLS, tool_choice="required")
    _, data, header = await ask(backend, body)
    assert calls_of(data) == [("get_weather", PARIS)] and "reasoning" in header
    out = await ask_stream(ScriptedBackend().push(reply_text(text)), body)
    assert [(c["name"], json.loads(c["arguments"])) for c in out.tool_calls] == calls_of(data)


async def test_auto_prose_after_reasoning_about_a_call_stays_prose() -> None:
    reply = Reply(message={"role": "assistant", "content": "It is sunny in Paris today.",
                           "reasoning_content": REASONED})
    backend = ScriptedBackend().push(reply)
    _, data, _ = await ask(backend, chat(tools=TOOLS))
    assert calls_of(data) == [] and message(data)["content"] == "It is sunny in Paris today."


# --- llama-server parse failures (HTTP 500 with the model text) ---------------------------


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


async def test_llama_server_parse_failure_is_rescued_from_its_text() -> None:
    backend = ScriptedBackend().push(reply_error(500, fixture("parse_error_qwen_xml.json")))
    body = chat("save 42", tools=[WRITE_TOOL], tool_choice="required")
    async with forge_client(backend, state=llamafile_state(backend)) as http:
        r = await http.post(URL, json=body)
    assert r.status_code == 200, r.text
    assert calls_of(r.json()) == [("write_file", {"path": "notes.txt", "content": "42"})]
    assert r.headers["x-forge-guardrail"] == "unparsed:500,rescued:hermes"
    assert len(backend.requests) == 1


async def test_streamed_parse_failure_event_is_rescued_too() -> None:
    event = json.dumps(fixture("parse_error_qwen_xml.json"))
    chunks: list[dict[str, Any] | str] = [
        {"role": "assistant", "content": None}, f"data: {event}\n\n"
    ]
    backend = ScriptedBackend().push(Reply(stream_chunks=chunks))
    body = chat("save 42", tools=[WRITE_TOOL], tool_choice="required", stream=True)
    async with forge_client(backend, state=llamafile_state(backend)) as http:
        r = await http.post(URL, json=body)
    out = assemble(r.text)
    assert out.errors == [] and out.finish_reasons == ["tool_calls"]
    assert json.loads(out.tool_calls[0]["arguments"]) == {"path": "notes.txt", "content": "42"}


async def test_parse_failure_without_text_is_retried_not_a_502() -> None:
    backend = ScriptedBackend().push(
        reply_error(500, fixture("parse_error_no_text.json")), reply_tool_call("get_weather", PARIS)
    )
    async with forge_client(backend, state=llamafile_state(backend)) as http:
        r = await http.post(URL, json=chat(tools=TOOLS))
    assert r.status_code == 200 and calls_of(r.json()) == [("get_weather", PARIS)]
    assert r.headers["x-forge-guardrail"].startswith("unparsed:500,retry:unparsed")


async def test_unrescuable_parse_failure_text_is_retried() -> None:
    backend = ScriptedBackend().push(
        reply_error(500, fixture("parse_error_lfm2.json")), reply_tool_call("get_weather", PARIS)
    )
    async with forge_client(backend, state=llamafile_state(backend)) as http:
        r = await http.post(URL, json=chat(tools=TOOLS))
    assert r.status_code == 200 and calls_of(r.json()) == [("get_weather", PARIS)]
    assert "<|tool_call_start|>" not in (message(r.json())["content"] or "")


async def test_other_500s_are_still_a_502_naming_the_backend() -> None:
    backend = ScriptedBackend().push(reply_error(500, {"error": {"message": "slot crashed"}}))
    async with forge_client(backend, state=llamafile_state(backend)) as http:
        r = await http.post(URL, json=chat(tools=TOOLS))
    assert r.status_code == 502 and "llamafile" in r.json()["error"]["message"]


# --- Gemma 4 and typed XML values ----------------------------------------------------------------


async def test_gemma4_native_call_is_rescued() -> None:
    text = '<|tool_call>call:search{query:<|"|>cats, dogs<|"|>,limit:2}<tool_call|>'
    backend = ScriptedBackend().push(reply_text(text))
    _, data, header = await ask(backend, chat(tools=TOOLS))
    assert calls_of(data) == [("search", {"query": "cats, dogs", "limit": 2})]
    assert header == "rescued:gemma4"


async def test_xml_string_parameter_stays_a_string() -> None:
    text = (
        "<function=write_file>\n<parameter=path>\n7\n</parameter>\n"
        "<parameter=content>\n[1, 2]\n</parameter>\n</function>"
    )
    backend = ScriptedBackend().push(reply_text(text))
    _, data, _ = await ask(backend, chat(tools=[WRITE_TOOL]))
    assert calls_of(data) == [("write_file", {"path": "7", "content": "[1, 2]"})]
