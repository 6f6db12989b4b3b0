"""The Anthropic backend client against a fake Anthropic API (an ``httpx.MockTransport``).

The fake replays the byte-exact fixtures in ``tests/fixtures/anthropic/`` (sources in the
README there): a non-streamed tool_use answer, the streamed tool_use transcript of Anthropic's
"Streaming Messages" docs (with its ``ping``), an in-stream overloaded error and a 401 body.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from forge_anthropic.client import AnthropicClient, normalize_base_url
from forge_anthropic.plugin import forge_register_backends

from forge_core.backend import BackendRequest, BackendSettings, BackendSpec
from forge_core.errors import (
    BackendHTTPError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
)
from forge_core.turns import BackendChunk
from forge_core.wire.anthropic import parse_messages_request, to_openai_request

PLUGIN_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = PLUGIN_ROOT.parents[1] / "tests" / "fixtures" / "anthropic"
KEY = "sk-ant-test-7c1f0e9a2b"
KEY_ENV = "FORGE_TEST_ANTHROPIC_KEY"
URL = "https://anthropic.example"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class Trickle(httpx.AsyncByteStream):
    """A response body arriving in small pieces, so SSE lines split across network reads."""

    def __init__(self, data: bytes, size: int = 7) -> None:
        self.data, self.size, self.closed = data, size, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.size):
            yield self.data[start : start + self.size]

    async def aclose(self) -> None:
        self.closed = True


class FakeAnthropic:
    """Records every request and answers with the next queued response."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.responses: list[httpx.Response | Exception] = []

    def answer(self, response: httpx.Response | Exception) -> FakeAnthropic:
        self.responses.append(response)
        return self

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.responses.pop(0)
        if isinstance(response, Exception):
            raise response
        return response

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.requests[-1].content)


def sse_response(data: bytes, stream: Trickle | None = None) -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=stream or Trickle(data)
    )


def make_client(
    fake: FakeAnthropic, *, environ: dict[str, str] | None = None, model: str | None = "claude-x"
) -> AnthropicClient:
    settings = BackendSettings(
        backend_url=URL,
        model=model,
        timeout=30.0,
        options={"anthropic_api_key_env": KEY_ENV},
    )
    return AnthropicClient(
        settings,
        transport=httpx.MockTransport(fake.handler),
        environ={KEY_ENV: KEY} if environ is None else environ,
    )


def openai_request(**extra: Any) -> BackendRequest:
    body = {
        "model": "claude-x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in SF?"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather.",
                    "parameters": {
                        "type": "object",
                        "properties": {"location": {"type": "string"}},
                        "required": ["location"],
                    },
                },
            }
        ],
        "max_tokens": 500,
        **extra,
    }
    return BackendRequest(body=body)


def claude_code_request(*, verbatim: bool = True) -> BackendRequest:
    original = json.loads(fixture_bytes("request_claude_code.json"))
    body = to_openai_request(parse_messages_request(original))
    body["model"] = "claude-x"
    return BackendRequest(
        body=body, verbatim=verbatim, client_protocol="anthropic", original=original
    )


async def collect(client: AnthropicClient, request: BackendRequest) -> list[BackendChunk]:
    return [chunk async for chunk in client.stream(request)]


# --- complete -----------------------------------------------------------------------------------


async def test_complete_translates_an_openai_request_and_parses_tool_use() -> None:
    fake = FakeAnthropic().answer(
        httpx.Response(200, content=fixture_bytes("message_tool_use.json"))
    )
    turn = await make_client(fake).complete(openai_request())

    sent = fake.requests[0]
    assert sent.method == "POST" and str(sent.url) == f"{URL}/v1/messages"
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert fake.body == {
        "model": "claude-x",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in SF?"}]}],
        "max_tokens": 500,
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather.",
                "input_schema": {
                    "type": "object",
                    "properties": {"location": {"type": "string"}},
                    "required": ["location"],
                },
            }
        ],
        "stream": False,
    }

    assert turn.content == "I'll check the current weather in San Francisco for you."
    (call,) = turn.tool_calls
    assert call.id == "toolu_01A09q90qw90lq917835lq9"
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"location": "San Francisco, CA", "unit": "celsius"}
    assert call.arguments == '{"location":"San Francisco, CA","unit":"celsius"}'
    assert turn.finish_reason == "tool_calls"
    assert turn.usage is not None
    assert (turn.usage.prompt_tokens, turn.usage.completion_tokens) == (472, 89)


async def test_verbatim_anthropic_request_is_forwarded_untouched() -> None:
    fake = FakeAnthropic().answer(
        httpx.Response(200, content=fixture_bytes("message_tool_use.json"))
    )
    request = claude_code_request()
    await make_client(fake).complete(request)

    expected = dict(request.original or {})
    expected["model"] = "claude-x"
    expected["stream"] = False
    assert fake.body == expected
    # What translation would have dropped is all still there.
    assert fake.body["system"][1]["cache_control"] == {"type": "ephemeral"}
    assert fake.body["tools"][2]["type"] == "web_search_20250305"
    assert fake.body["messages"][1]["content"][0]["type"] == "thinking"


async def test_a_retry_of_an_anthropic_request_is_translated() -> None:
    fake = FakeAnthropic().answer(
        httpx.Response(200, content=fixture_bytes("message_tool_use.json"))
    )
    await make_client(fake).complete(claude_code_request(verbatim=False))
    assert isinstance(fake.body["system"], str)  # rebuilt from the OpenAI body
    assert "cache_control" not in json.dumps(fake.body)
    assert [t["name"] for t in fake.body["tools"]] == ["Read", "Bash"]


async def test_max_tokens_default_when_the_openai_client_gives_none() -> None:
    fake = FakeAnthropic().answer(
        httpx.Response(200, content=fixture_bytes("message_tool_use.json"))
    )
    request = openai_request()
    del request.body["max_tokens"]
    await make_client(fake).complete(request)
    assert fake.body["max_tokens"] == 4096


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"<html>oops</html>", "not JSON"),
        (b'{"type": "message", "role": "assistant"}', "content list"),
        (
            b'{"content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": "[1]"}]}',
            "type str for tool 'f'",
        ),
        (b'{"content": [{"type": "tool_use", "name": "f", "input": {}}]}', "id and name"),
        (b'{"content": ["text"]}', "not an object"),
    ],
)
async def test_broken_answers_are_protocol_errors(payload: bytes, match: str) -> None:
    fake = FakeAnthropic().answer(httpx.Response(200, content=payload))
    with pytest.raises(BackendProtocolError, match=match) as info:
        await make_client(fake).complete(openai_request())
    assert info.value.status == 502


# --- errors never carry the key -------------------------------------------------------------------


async def test_error_status_carries_the_upstream_message() -> None:
    fake = FakeAnthropic().answer(
        httpx.Response(401, content=fixture_bytes("error_authentication.json"))
    )
    with pytest.raises(BackendHTTPError) as info:
        await make_client(fake).complete(openai_request())
    error = info.value
    assert error.backend_status == 401
    assert error.detail == "authentication_error: invalid x-api-key"
    assert "anthropic" in error.message
    assert error.status == 502  # forge's own credentials problem, not the client's request
    assert KEY not in error.message


async def test_an_upstream_message_echoing_the_key_is_scrubbed() -> None:
    echo = {"type": "error", "error": {"type": "invalid_request_error", "message": f"bad {KEY}"}}
    fake = FakeAnthropic().answer(httpx.Response(400, json=echo))
    with pytest.raises(BackendHTTPError) as info:
        await make_client(fake).complete(openai_request())
    assert KEY not in info.value.message and KEY not in str(info.value)
    assert "[redacted]" in info.value.message
    assert info.value.status == 400


async def test_a_non_json_error_body_is_quoted_shortly() -> None:
    fake = FakeAnthropic().answer(httpx.Response(502, content=b"Bad gateway " + b"x" * 2000))
    with pytest.raises(BackendHTTPError) as info:
        await make_client(fake).complete(openai_request())
    assert info.value.detail.startswith("Bad gateway")
    assert len(info.value.detail) <= 500


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), BackendUnavailable),
        (httpx.ReadTimeout("timed out"), BackendTimeout),
        (httpx.RemoteProtocolError("peer closed connection"), BackendUnavailable),
    ],
)
async def test_transport_failures_map_to_backend_errors(
    failure: Exception, kind: type[Exception]
) -> None:
    fake = FakeAnthropic().answer(failure)
    with pytest.raises(kind) as info:
        await make_client(fake).complete(openai_request())
    assert "anthropic" in str(info.value)
    assert KEY not in str(info.value)


async def test_no_key_means_no_key_header(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeAnthropic().answer(
        httpx.Response(200, content=fixture_bytes("message_tool_use.json"))
    )
    client = make_client(fake, environ={})
    await client.start()
    assert KEY_ENV in caplog.text
    await client.complete(openai_request())
    assert "x-api-key" not in fake.requests[0].headers


# --- streaming ------------------------------------------------------------------------------------


async def test_stream_parses_the_documented_tool_use_transcript() -> None:
    fake = FakeAnthropic().answer(sse_response(fixture_bytes("stream_tool_use.sse")))
    chunks = await collect(make_client(fake), openai_request())

    assert fake.body["stream"] is True
    assert fake.requests[0].headers["accept"] == "text/event-stream"
    assert "".join(c.text for c in chunks) == "Okay, let's check the weather for San Francisco, CA:"
    fragments = [f for c in chunks for f in c.tool_calls]
    assert (fragments[0].index, fragments[0].id, fragments[0].name) == (
        0,
        "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "get_weather",
    )
    assert all(f.index == 0 and f.id is None for f in fragments[1:])
    assert all(f.arguments for f in fragments[1:])  # the empty first delta is not a fragment
    arguments = "".join(f.arguments for f in fragments)
    assert json.loads(arguments) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    finish = [c for c in chunks if c.finish_reason]
    assert len(finish) == 1 and finish[0] is chunks[-1]
    assert finish[0].finish_reason == "tool_calls"
    assert finish[0].usage is not None
    assert (finish[0].usage.prompt_tokens, finish[0].usage.completion_tokens) == (472, 89)


async def test_stream_of_a_verbatim_request_forces_stream_and_model() -> None:
    fake = FakeAnthropic().answer(sse_response(fixture_bytes("stream_tool_use.sse")))
    request = claude_code_request()
    request.original = {**(request.original or {}), "stream": False, "model": "alias"}
    await collect(make_client(fake), request)
    assert fake.body["stream"] is True
    assert fake.body["model"] == "claude-x"
    assert fake.body["system"][1]["cache_control"] == {"type": "ephemeral"}


async def test_stream_in_stream_error_raises_after_the_text() -> None:
    fake = FakeAnthropic().answer(sse_response(fixture_bytes("stream_overloaded_error.sse")))
    seen: list[BackendChunk] = []
    with pytest.raises(BackendHTTPError) as info:
        async for chunk in make_client(fake).stream(openai_request()):
            seen.append(chunk)
    assert [c.text for c in seen] == ["Hello"]
    assert info.value.backend_status == 529
    assert info.value.detail == "overloaded_error: Overloaded"


async def test_stream_cut_before_message_stop_is_a_protocol_error() -> None:
    data = fixture_bytes("stream_tool_use.sse")
    cut = data[: data.index(b"event: message_delta")]
    fake = FakeAnthropic().answer(sse_response(cut))
    with pytest.raises(BackendProtocolError, match="message_stop"):
        await collect(make_client(fake), openai_request())


async def test_stream_error_status_is_read_and_raised() -> None:
    fake = FakeAnthropic().answer(
        httpx.Response(401, stream=Trickle(fixture_bytes("error_authentication.json")))
    )
    with pytest.raises(BackendHTTPError, match="invalid x-api-key") as info:
        await collect(make_client(fake), openai_request())
    assert KEY not in str(info.value)


async def test_stream_connect_failure() -> None:
    fake = FakeAnthropic().answer(httpx.ConnectError("Connection refused"))
    with pytest.raises(BackendUnavailable, match="unreachable"):
        await collect(make_client(fake), openai_request())


async def test_stopping_early_closes_the_upstream_response() -> None:
    body = Trickle(fixture_bytes("stream_tool_use.sse"))
    fake = FakeAnthropic().answer(sse_response(b"", stream=body))
    stream = make_client(fake).stream(openai_request())
    first = await anext(stream)
    assert first.text == "Okay"
    await stream.aclose()  # what the host does when its client disconnects
    assert body.closed


def _one_tool_stream(start_input: dict[str, Any], deltas: list[str]) -> bytes:
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 3}}}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_x",
                    "name": "f",
                    "input": start_input,
                },
            },
        ),
        *(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": d},
                },
            )
            for d in deltas
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 4},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events)


@pytest.mark.parametrize(
    ("start_input", "deltas", "arguments"),
    [
        ({}, [""], "{}"),  # a call without arguments still gets a JSON object
        ({"q": "all at once"}, [], '{"q":"all at once"}'),  # input only in the start event
        ({}, ['{"q":', '"x"}'], '{"q":"x"}'),
    ],
)
async def test_stream_tool_arguments_are_never_lost(
    start_input: dict[str, Any], deltas: list[str], arguments: str
) -> None:
    fake = FakeAnthropic().answer(sse_response(_one_tool_stream(start_input, deltas)))
    chunks = await collect(make_client(fake), openai_request())
    assert "".join(f.arguments for c in chunks for f in c.tool_calls) == arguments
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 3


# --- status, models, count_tokens -----------------------------------------------------------------


async def test_status_lists_models() -> None:
    listing = {"data": [{"id": "claude-x", "type": "model"}, {"id": "claude-y", "type": "model"}]}
    fake = FakeAnthropic().answer(httpx.Response(200, json=listing))
    status = await make_client(fake).status()
    assert status.ready and status.models == ["claude-x", "claude-y"]
    assert fake.requests[0].method == "GET"
    assert fake.requests[0].url.path == "/v1/models"
    assert fake.requests[0].extensions["timeout"]["read"] == 5.0


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (httpx.Response(401, content=fixture_bytes("error_authentication.json")), "HTTP 401"),
        (httpx.ConnectError("Connection refused"), "unreachable"),
        (httpx.ConnectTimeout("slow"), "did not answer"),
    ],
)
async def test_status_reports_a_reason_instead_of_raising(
    answer: httpx.Response | Exception, reason: str
) -> None:
    status = await make_client(FakeAnthropic().answer(answer)).status()
    assert not status.ready
    assert reason in status.detail
    assert KEY not in status.detail


async def test_status_names_the_missing_key_variable() -> None:
    fake = FakeAnthropic().answer(
        httpx.Response(401, content=fixture_bytes("error_authentication.json"))
    )
    status = await make_client(fake, environ={}).status()
    assert not status.ready
    assert f"{KEY_ENV} is not set" in status.detail


def test_models_is_the_configured_model() -> None:
    (identity,) = make_client(FakeAnthropic()).models()
    assert (identity.wire_name, identity.key) == ("claude-x", "claude-x")
    assert make_client(FakeAnthropic(), model=None).models() == []


async def test_count_tokens_uses_anthropics_endpoint() -> None:
    fake = FakeAnthropic().answer(httpx.Response(200, json={"input_tokens": 2095}))
    count = await make_client(fake).count_tokens(openai_request(temperature=0.5).body)
    assert count == 2095
    assert fake.requests[0].url.path == "/v1/messages/count_tokens"
    assert set(fake.body) == {"model", "messages", "system", "tools"}


@pytest.mark.parametrize(
    "answer", [httpx.Response(404, json={}), httpx.ConnectError("down"), httpx.Response(200)]
)
async def test_count_tokens_is_none_when_unavailable(answer: httpx.Response | Exception) -> None:
    assert await make_client(FakeAnthropic().answer(answer)).count_tokens({"messages": []}) is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.anthropic.com", "https://api.anthropic.com"),
        ("https://api.anthropic.com/", "https://api.anthropic.com"),
        ("http://localhost:8080/v1/", "http://localhost:8080"),
    ],
)
def test_base_url_normalization(url: str, expected: str) -> None:
    assert normalize_base_url(url) == expected


# --- registration ---------------------------------------------------------------------------------


def test_plugin_registers_the_anthropic_backend() -> None:
    specs: list[BackendSpec] = []
    forge_register_backends(register=specs.append)
    (spec,) = specs
    assert spec.name == "anthropic"
    assert spec.default_url == "https://api.anthropic.com"
    assert spec.prompt_alternative == "llamafile"
    caps = spec.capabilities
    assert (caps.native_tools, caps.prompt_tools, caps.streaming) == (True, False, True)
    assert (caps.constrained_decoding, caps.usage_reporting) == (False, True)
    options = {option.name: option for option in spec.cli_options}
    assert options["anthropic_api_key_env"].default == "ANTHROPIC_API_KEY"
    assert set(options) == {"anthropic_api_key_env", "anthropic_version", "anthropic_max_tokens"}
    factory: Callable[[BackendSettings], Any] = spec.client_factory
    client = factory(BackendSettings(backend_url=None, model="m", timeout=5.0))
    assert isinstance(client, AnthropicClient)
    assert client.base_url == "https://api.anthropic.com"


def test_the_distribution_declares_the_entry_point() -> None:
    project = tomllib.loads((PLUGIN_ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "forge-proxy-anthropic"
    assert project["entry-points"]["forge.backends"] == {"anthropic": "forge_anthropic.plugin"}
    assert any(dep.startswith("forge-proxy-core") for dep in project["dependencies"])
