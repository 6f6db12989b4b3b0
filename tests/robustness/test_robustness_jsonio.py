"""The one JSON reader and writer (forge_core.wire.jsonio) and the parsers that use it: strict
where Python's json is lenient, bounded in depth, and unable to emit invalid UTF-8 or NaN."""

from __future__ import annotations

import json
from typing import Any

import pytest
from forge_anthropic.decode import StreamDecoder, turn_from_message
from forge_ollama.ndjson import NDJSONDecoder
from forge_ollama.translate import canonical_arguments, to_ollama_request

from forge_core.errors import BackendProtocolError, InvalidRequest
from forge_core.openai_client import content_text, parse_chunk, parse_completion, parse_usage
from forge_core.tokens import measure
from forge_core.turns import AssistantTurn, ToolCall
from forge_core.wire import jsonio
from forge_core.wire.anthropic import compact_json, to_anthropic_message, tool_input_json
from forge_core.wire.openai import ChunkWriter, completion_body, parse_chat_request


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


# --- reading ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"t": NaN}', "NaN is not a JSON number"),
        ("[Infinity]", "Infinity is not a JSON number"),
        ("[-Infinity]", "-Infinity is not a JSON number"),
        ("[1e400]", "the number 1e400 is out of range"),
        ("[" + "9" * 5000 + "]", "a number has too many digits"),
        (nested(jsonio.MAX_DEPTH + 1), f"nested deeper than the limit of {jsonio.MAX_DEPTH}"),
        (nested(100_000), "nested deeper than the limit"),  # past the recursion limit
        ('{"a": ', "Expecting value (line 1 column 7)"),
    ],
)
def test_loads_refuses_what_is_not_json_forge_accepts(text: str, reason: str) -> None:
    with pytest.raises(jsonio.JSONRejected) as info:
        jsonio.loads(text)
    assert reason in info.value.reason


def test_nesting_up_to_the_limit_is_accepted() -> None:
    assert jsonio.loads(nested(jsonio.MAX_DEPTH)) is not None
    wide = "[" + ",".join([nested(jsonio.MAX_DEPTH)] * 50) + "]"  # many containers, depth 129
    with pytest.raises(jsonio.JSONRejected):
        jsonio.loads(wide)
    many = "[" + ",".join(["[]"] * 5000) + "]"  # many containers, shallow
    assert len(jsonio.loads(many)) == 5000


def test_lone_surrogates_become_u_fffd_everywhere_and_pairs_survive() -> None:
    value = jsonio.loads('{"k\\ud800": ["a\\udc00b", {"x": "\\ud83d"}], "ok": "\\ud83d\\ude00"}')
    assert value == {"k\ufffd": ["a\ufffdb", {"x": "\ufffd"}], "ok": "😀"}
    assert jsonio.loads('"\\uD800"') == "\ufffd"  # upper-case escapes too


@pytest.mark.parametrize(
    "data", [b'"\xed\xa0\x80"', b'"\xff"', b'{"a": "\xc3"}'], ids=["cesu", "ff", "cut"]
)
def test_invalid_utf8_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(jsonio.JSONRejected, match="invalid UTF-8"):
        jsonio.loads(data)


def test_bytes_with_a_bom_and_utf16_still_decode() -> None:
    assert jsonio.loads(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    assert jsonio.loads('{"a": "é"}'.encode("utf-16")) == {"a": "é"}


def test_client_and_backend_refusals_carry_the_right_error() -> None:
    with pytest.raises(InvalidRequest, match="The request body is not valid JSON: NaN"):
        jsonio.client_json(b'{"temperature": NaN}')
    with pytest.raises(BackendProtocolError) as info:
        jsonio.backend_json("vllm", b"[1e999]", "streamed an event")
    assert info.value.message == (
        "Backend 'vllm' streamed an event that is not JSON: the number 1e999 is out of range"
    )


# --- writing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"t": "a\ud800b"}, '{"t": "a\ufffdb"}'),
        ({"\udc00": 1}, '{"\ufffd": 1}'),
        ({"x": float("nan"), "y": [float("inf")]}, '{"x": null, "y": [null]}'),
        ({"é": "😀"}, '{"é": "😀"}'),
    ],
)
def test_dumps_never_fails_and_writes_valid_utf8(value: Any, expected: str) -> None:
    text = jsonio.dumps(value)
    assert text == expected
    assert json.loads(text.encode("utf-8")) is not None  # encodes, and is strict JSON


def test_safe_response_renders_what_starlette_cannot() -> None:
    body = jsonio.SafeJSONResponse({"m": "x\ud800", "n": float("nan")}).body
    assert body == '{"m":"x\ufffd","n":null}'.encode()


def test_backend_values_that_json_cannot_carry_are_protocol_errors() -> None:
    with pytest.raises(BackendProtocolError, match="holding NaN or Infinity"):
        jsonio.backend_dumps("ollama", {"x": float("nan")}, "tool-call arguments")
    assert jsonio.backend_dumps("ollama", {"c": "P\ud800"}, "args") == '{"c":"P\ufffd"}'


def test_clean_json_text_rewrites_only_escaped_lone_surrogates() -> None:
    assert jsonio.clean_json_text('{"c": "P\\ud800"}') == '{"c":"P\ufffd"}'
    assert jsonio.clean_json_text('{"c": "\\u00e9"}') == '{"c": "\\u00e9"}'  # untouched
    assert jsonio.clean_json_text('{"c": "\\ud800') == '{"c": "\\ud800'  # broken: untouched


# --- the parsers and emitters that use them ---------------------------------------------------


def chunk(delta: Any, **choice: Any) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": delta, **choice}]})


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ('{"choices": ["x"]}', "a choice that is not an object"),
        (chunk({"tool_calls": 5}), "tool_calls that are not a list"),
        (chunk({"content": [{"type": "text", "text": 5}]}), "text of type int"),
        (chunk({"content": 5}), "content of type int"),
        ('{"choices": [], "usage": {"prompt_tokens": NaN}}', "NaN is not a JSON number"),
        ('{"x": ' + nested(1000) + "}", "nested deeper"),
    ],
)
def test_openai_wire_stream_events_with_wrong_inner_types(payload: str, reason: str) -> None:
    with pytest.raises(BackendProtocolError, match=reason) as info:
        parse_chunk("llama", payload)
    assert info.value.backend == "llama"


def test_openai_wire_tolerates_what_is_harmless() -> None:
    parsed = parse_chunk("llama", chunk({"content": [{"type": "text", "text": "a"}, "b",
                                                     {"type": "image_url"}]},
                                        finish_reason={"weird": 1}))
    assert parsed is not None and parsed.text == "ab" and parsed.finish_reason is None
    assert parse_usage({"prompt_tokens": True, "completion_tokens": 3}) is None
    assert parse_usage({"prompt_tokens": -1, "completion_tokens": 3}) is None
    turn = parse_completion("llama", {"choices": [{"message": {"content": "hi"},
                                                   "finish_reason": 7}]})
    assert turn.content == "hi" and turn.finish_reason == "stop"


def test_openai_wire_completion_with_wrong_inner_types() -> None:
    with pytest.raises(BackendProtocolError, match="without any choices"):
        parse_completion("llama", {"choices": ["x"]})
    with pytest.raises(BackendProtocolError, match="text of type list"):
        content_text("llama", [{"type": "text", "text": ["a"]}])
    message = {"tool_calls": [{"function": {"name": "f", "arguments": {"x": float("nan")}}}]}
    with pytest.raises(BackendProtocolError, match="NaN or Infinity"):
        parse_completion("llama", {"choices": [{"message": message}]})


def test_ollama_stream_lines_and_arguments_are_strict() -> None:
    with pytest.raises(BackendProtocolError, match="NaN is not a JSON number") as info:
        NDJSONDecoder("ollama").feed(b'{"done": true, "eval_count": NaN}\n')
    assert info.value.backend == "ollama"
    with pytest.raises(BackendProtocolError, match="nested deeper"):
        NDJSONDecoder("ollama").feed(nested(1000).encode() + b"\n")
    assert canonical_arguments({"city": "P\ud800"}, "f") == '{"city":"P\ufffd"}'
    with pytest.raises(BackendProtocolError, match="NaN or Infinity"):
        canonical_arguments({"x": float("inf")}, "f")


def test_ollama_history_arguments_that_json_cannot_send_stay_raw() -> None:
    body = {"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c1", "function": {"name": "f", "arguments": '{"x": NaN}'}},
        {"id": "c2", "function": {"name": "g", "arguments": '{"y": "\\ud800"}'}},
    ]}]}
    calls = to_ollama_request(body, wire_model="m", num_ctx=None, stream=False)["messages"][0][
        "tool_calls"
    ]
    assert calls[0]["function"]["arguments"] == {"_raw": '{"x": NaN}'}
    assert calls[1]["function"]["arguments"] == {"y": "\ufffd"}


def test_anthropic_backend_events_are_strict() -> None:
    decoder = StreamDecoder()
    with pytest.raises(BackendProtocolError, match="nested deeper"):
        decoder.feed("message_start", '{"type": "message_start", "x": ' + nested(999) + "}")
    with pytest.raises(BackendProtocolError, match="text_delta whose text is not a string"):
        decoder.feed("content_block_delta", json.dumps(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                                  "text": 5}}))
    with pytest.raises(BackendProtocolError, match="NaN or Infinity"):
        turn_from_message({"content": [{"type": "tool_use", "id": "t", "name": "f",
                                        "input": {"x": float("nan")}}]})


def test_client_text_parts_must_hold_strings() -> None:
    with pytest.raises(InvalidRequest, match="part 1 is of type 'text'") as info:
        parse_chat_request({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "ok"}, {"type": "text", "text": None}]}]})
    assert info.value.param == "messages.0.content"


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": [{"type": "text", "text": 5}, {"type": "x", "text": [1]}]},
        {"role": "user", "content": [7, None, "abc"]},
        {"role": "assistant", "content": None, "tool_calls": 5},
        "not a message",
    ],
)
def test_budget_counting_survives_any_shape(message: Any) -> None:
    chars = measure({"messages": [message, {"role": "user", "content": "hello"}]}).text_bytes
    assert chars == 5 + (3 if message == {"role": "user", "content": [7, None, "abc"]} else 0)


def test_emitters_write_u_fffd_for_surrogates_in_arguments() -> None:
    call = ToolCall("call_1", "f", '{"city": "P\\ud800"}')  # the model escaped half an emoji
    writer = ChunkWriter("m", "chatcmpl-1")
    for piece in writer.tool_call(0, call):
        data = json.loads(piece)
        args = data["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
        assert "\\ud800" not in args
    body = completion_body(AssistantTurn(tool_calls=[call]), "m", "chatcmpl-1")
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == (
        '{"city":"P\ufffd"}'
    )
    text, parsed = tool_input_json(call)
    assert parsed == {"city": "P\ufffd"} and text == '{"city":"P\ufffd"}'
    message = to_anthropic_message(AssistantTurn(content="x\ud800", tool_calls=[call]), "m")
    assert compact_json(message).encode()  # encodes: no surrogate left anywhere
