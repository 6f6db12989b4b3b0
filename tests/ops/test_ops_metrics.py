"""/metrics: requests, latencies, guardrail events, backend errors, tokens, queue and in-flight,
parsed with prometheus-client's own parser after real requests through forge's engine."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from forge_core.config import GuardrailSettings
from forge_core.testing import (
    WEATHER_TOOL,
    ScriptedBackend,
    chat,
    forge_client,
    reply_error,
    reply_text,
    reply_tool_call,
)
from tests.ops.conftest import parse_metrics, scrape, value

HERMES = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


async def test_requests_latency_and_tokens_are_counted_per_endpoint_and_streaming() -> None:
    backend = ScriptedBackend().push(reply_text("hello"), reply_text("streamed hello"))
    async with forge_client(backend) as http:
        assert (await http.post("/v1/chat/completions", json=chat())).status_code == 200
        r = await http.post("/v1/chat/completions", json=chat(stream=True))
        assert r.status_code == 200 and "[DONE]" in r.text
        assert (await http.post("/v1/chat/completions", content=b"{")).status_code == 400
        m = await scrape(http)
    requests = "forge_requests_total"
    assert value(m, requests, endpoint="/v1/chat/completions", status="200",
                 streamed="false", protocol="openai") == 1
    assert value(m, requests, endpoint="/v1/chat/completions", status="200", streamed="true") == 1
    assert value(m, requests, status="400") == 1
    # Every request has a total latency and a first byte; the two that reached the backend
    # have a backend time and an overhead.
    assert value(m, "forge_request_duration_seconds_count") == 3
    assert value(m, "forge_time_to_first_byte_seconds_count") == 3
    assert value(m, "forge_backend_duration_seconds_count") == 2
    assert value(m, "forge_overhead_seconds_count") == 2
    total = value(m, "forge_request_duration_seconds_sum")
    assert 0 <= value(m, "forge_overhead_seconds_sum") <= total
    assert value(m, "forge_backend_requests_total", attempt="first") == 2
    # ScriptedBackend reports 10 prompt and 5 completion tokens per answer.
    assert value(m, "forge_backend_tokens_total", type="input") == 20
    assert value(m, "forge_backend_tokens_total", type="output") == 10
    assert value(m, "forge_requests_in_flight") == 0
    assert value(m, "forge_queue_depth") == 0


async def test_guardrail_events_by_kind_and_detail() -> None:
    backend = ScriptedBackend().push(
        reply_text(HERMES),                                   # rescued:hermes
        reply_tool_call("get_weather", {"town": "Oslo"}),     # retry:schema ...
        reply_tool_call("get_weather", {"city": "Oslo"}),     # ... then accepted
        reply_text("no"), reply_text("still no"),             # retry, then exhausted
    )
    guard = GuardrailSettings(max_retries=1)
    async with forge_client(backend, guardrails=guard) as http:
        for body in (
            chat(tools=[WEATHER_TOOL]),
            chat(tools=[WEATHER_TOOL], stream=True),
            chat(tools=[WEATHER_TOOL], tool_choice="required"),
        ):
            r = await http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200
        m = await scrape(http)
    events = "forge_guardrail_events_total"
    assert value(m, events, kind="rescued", detail="hermes") == 1
    assert value(m, events, kind="retry", detail="schema") == 1
    assert value(m, events, kind="retry", detail="no_tool_call") == 1
    assert value(m, events, kind="exhausted", detail="no_tool_call") == 1
    assert value(m, "forge_backend_requests_total", attempt="retry") == 2
    assert value(m, "forge_backend_requests_total", attempt="first") == 3


async def test_respond_tool_answers_are_counted() -> None:
    backend = ScriptedBackend().push(reply_tool_call("respond", {"message": "Just prose."}))
    guard = GuardrailSettings(inject_respond_tool=True)
    async with forge_client(backend, guardrails=guard) as http:
        r = await http.post("/v1/chat/completions", json=chat(tools=[WEATHER_TOOL]))
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "Just prose."
        m = await scrape(http)
    assert value(m, "forge_guardrail_events_total", kind="respond") == 1


class Refusing(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)


class Slow(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)


async def test_backend_errors_by_kind() -> None:
    backend = ScriptedBackend().push(reply_error(500, {"error": "boom"}))
    async with forge_client(backend) as http:
        assert (await http.post("/v1/chat/completions", json=chat())).status_code == 502
        m = await scrape(http)
    assert value(m, "forge_backend_errors_total", kind="http", status="500") == 1
    assert value(m, "forge_requests_total", status="502") == 1
    for transport, kind, status in ((Refusing(), "unreachable", 502), (Slow(), "timeout", 504)):
        async with forge_client(transport) as http:
            r = await http.post("/v1/messages", json={
                "model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == status and r.json()["type"] == "error"
            m = await scrape(http)
        assert value(m, "forge_backend_errors_total", kind=kind) == 1
        assert value(m, "forge_requests_total", endpoint="/v1/messages", protocol="anthropic",
                     status=str(status)) == 1


async def test_queue_depth_and_in_flight_while_a_single_slot_is_busy() -> None:
    backend = ScriptedBackend().push(reply_text("a", delay=30), reply_text("b"))
    async with forge_client(backend, max_concurrency=1, max_queue=4) as http:
        first = asyncio.ensure_future(http.post("/v1/chat/completions", json=chat()))
        second = asyncio.ensure_future(http.post("/v1/chat/completions", json=chat()))
        m: dict = {}
        for _ in range(500):  # until both are inside forge (a hang guard, not a timing check)
            m = await scrape(http)
            if value(m, "forge_queue_depth") == 1:
                break
            await asyncio.sleep(0.01)
        assert value(m, "forge_queue_depth") == 1
        assert value(m, "forge_backend_slots_in_use") == 1
        assert value(m, "forge_requests_in_flight") == 2
        first.cancel()
        second.cancel()
        await asyncio.gather(first, second, return_exceptions=True)


@pytest.mark.parametrize("public", [False, True])
async def test_metrics_follow_the_api_key_rule_unless_opened(public: bool) -> None:
    async with forge_client(ScriptedBackend(), api_key="s3cret-key", metrics_public=public) \
            as http:
        r = await http.get("/metrics")
        if public:
            assert r.status_code == 200
        else:
            assert r.status_code == 401
            error = r.json()["error"]
            assert error["type"] == "authentication_error" and "s3cret" not in r.text
            ok = await http.get("/metrics", headers={"Authorization": "Bearer s3cret-key"})
            assert ok.status_code == 200
            assert value(parse_metrics(ok.text), "forge_workers") == 1


async def test_no_metrics_removes_the_endpoint() -> None:
    async with forge_client(ScriptedBackend(), metrics=False) as http:
        assert (await http.get("/metrics")).status_code == 404
        assert (await http.post("/v1/chat/completions", json=chat())).status_code == 200
