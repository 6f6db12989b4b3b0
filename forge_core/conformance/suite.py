"""The conformance suite, run by ``pytest --forge-conformance NAME`` (see the package doc).

Every test builds the plugin's own client with its ``client_factory`` against a fake server
on loopback (a fresh one per test) and drives it the way forge does. Tests are synchronous
(each runs its own event loop), so the suite needs no asyncio plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest

from forge_core.backend import (
    BackendClient,
    BackendRequest,
    BackendSpec,
    BackendStatus,
    Capabilities,
    ModelIdentity,
)
from forge_core.config import ServeConfig
from forge_core.conformance import SERVED_MODEL, Harness, harness_for, settings_for
from forge_core.errors import (
    BackendError,
    BackendHTTPError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    ForgeError,
)
from forge_core.guardrails.attempt import CallAssembler
from forge_core.managed import free_port
from forge_core.plugins import PluginHost
from forge_core.testing import (
    WEATHER_TOOL,
    Reply,
    ScriptedBackend,
    reply_error,
    reply_text,
    reply_tool_call,
    serve_on_loopback,
)
from forge_core.turns import AssistantTurn, BackendChunk, ToolCall

T = TypeVar("T")

TIMEOUT = 1.0
"""Seconds the client is given in the timeout tests (the fake waits much longer)."""
SLOW = 6.0
CANCEL_DEADLINE = 10.0
"""Seconds the fake may take to see a closed stream (generous: the machine may be loaded)."""


@dataclass
class Subject:
    """The plugin under test: its registration, its harness and a way to build clients."""

    name: str
    spec: BackendSpec
    harness: Harness

    def client(self, url: str, *, timeout: float = 10.0) -> BackendClient:
        with _environ(self.harness.env):
            return self.spec.client_factory(
                settings_for(self.spec, self.harness, url, timeout=timeout)
            )

    def fake(self) -> ScriptedBackend:
        return self.harness.fake([SERVED_MODEL])


@pytest.fixture(scope="module")
def subject(request: pytest.FixtureRequest) -> Subject:
    name = request.config.getoption("forge_conformance", default=None)
    if not name:
        pytest.skip("run with --forge-conformance NAME")
    host = PluginHost()
    host.load([name])
    specs = [s for owner, s in host._collect("forge_register_backends") if owner == name]
    spec = next((s for s in specs if s.name == name), specs[0] if specs else None)
    if spec is None:
        pytest.fail(f"plugin '{name}' registered no backend")
    probe = spec.client_factory(settings_for(spec, Harness(), "http://127.0.0.1:9"))
    harness = harness_for(name, probe)
    run(probe.aclose())
    return Subject(name, spec, harness)


def run(work: Awaitable[T]) -> T:
    async def main() -> T:
        return await work

    return asyncio.run(main())


@contextlib.contextmanager
def _environ(values: Any) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def served(subject: Subject) -> Iterator[tuple[ScriptedBackend, str]]:
    fake = subject.fake()
    with serve_on_loopback(fake.app) as url:
        yield fake, url


async def started(client: BackendClient) -> BackendClient:
    await client.start()
    return client


def request_for(client: BackendClient, **extra: Any) -> BackendRequest:
    """A request as the engine sends it: the served wire name, one user message."""
    identities = client.models()
    model = identities[0].wire_name if identities else SERVED_MODEL
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return BackendRequest(body=body)


async def collect(stream: AsyncIterator[BackendChunk]) -> list[BackendChunk]:
    return [chunk async for chunk in stream]


def both_paths(
    subject: Subject, url: str, reply: Callable[[], Reply] | None, fake: ScriptedBackend | None,
    *, timeout: float = 10.0,
) -> list[BaseException | None]:
    """Run one complete() and one stream() with ``reply`` scripted; the exception of each."""
    outcomes: list[BaseException | None] = []

    async def go() -> None:
        client = await started(subject.client(url, timeout=timeout))
        try:
            for streamed in (False, True):
                if fake is not None and reply is not None:
                    fake.push(reply())
                request = request_for(client)
                try:
                    if streamed:
                        await collect(client.stream(request))
                    else:
                        await client.complete(request)
                except BaseException as exc:  # judged by the caller
                    outcomes.append(exc)
                else:
                    outcomes.append(None)
        finally:
            await client.aclose()

    run(go())
    return outcomes


def assert_backend_error(exc: BaseException | None, kind: type[BackendError], subject: Subject,
                         status: int | None = None) -> None:
    assert exc is not None, f"expected {kind.__name__}, the call succeeded"
    assert isinstance(exc, ForgeError), (
        f"raised {type(exc).__name__}: clients must raise forge_core.errors exceptions"
    )
    assert isinstance(exc, kind), f"expected {kind.__name__}, got {type(exc).__name__}: {exc}"
    assert isinstance(exc, BackendError) and exc.backend == subject.spec.name, (
        f"the error must name the backend '{subject.spec.name}': {exc.message}"
    )
    if status is not None:
        assert exc.status == status, f"status {exc.status}, expected {status}: {exc.message}"
    if subject.harness.secret:
        assert subject.harness.secret not in exc.message, "a credential leaked into an error"


# --- registration -----------------------------------------------------------------------------


def test_registration_describes_the_backend(subject: Subject) -> None:
    spec = subject.spec
    assert spec.name and spec.description
    assert isinstance(spec.capabilities, Capabilities)
    identity = spec.derive_identity(SERVED_MODEL)
    assert isinstance(identity, ModelIdentity) and identity.wire_name and identity.key
    assert spec.derive_identity(SERVED_MODEL) == identity, "derive_identity must be pure"


# --- error mapping ----------------------------------------------------------------------------


def test_an_unreachable_backend_is_backend_unavailable(subject: Subject) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for exc in both_paths(subject, url, None, None):
        assert_backend_error(exc, BackendUnavailable, subject, status=502)


def test_a_backend_that_does_not_answer_in_time_is_a_timeout(subject: Subject) -> None:
    with served(subject) as (fake, url):
        outcomes = both_paths(
            subject, url, lambda: reply_text("late", delay=SLOW), fake, timeout=TIMEOUT
        )
    for exc in outcomes:
        assert_backend_error(exc, BackendTimeout, subject, status=504)


@pytest.mark.parametrize("status", [500, 503, 400, 404])
def test_http_errors_are_mapped(subject: Subject, status: int) -> None:
    # The core's own mapping is the reference: a plugin raises BackendHTTPError with the status.
    expected = BackendHTTPError(subject.spec.name, status, "-").status
    body = {"error": {"message": f"conformance says {status}", "type": "test_error"}}
    with served(subject) as (fake, url):
        outcomes = both_paths(subject, url, lambda: reply_error(status, body), fake)
    for exc in outcomes:
        assert_backend_error(exc, BackendHTTPError, subject, status=expected)
        assert isinstance(exc, BackendHTTPError) and exc.backend_status == status


def test_a_broken_envelope_is_a_protocol_error(subject: Subject) -> None:
    with served(subject) as (fake, url):
        for raw in subject.harness.broken_bodies:
            fake.push(Reply(raw_body=raw))
            exc = _first_error(subject, url, streamed=False)
            assert_backend_error(exc, BackendProtocolError, subject, status=502)
        for raw in subject.harness.broken_streams:
            fake.push(Reply(stream_chunks=[raw.decode()]))
            exc = _first_error(subject, url, streamed=True)
            assert_backend_error(exc, BackendProtocolError, subject, status=502)


def _first_error(subject: Subject, url: str, *, streamed: bool) -> BaseException | None:
    async def go() -> BaseException | None:
        client = subject.client(url)  # not started: the next scripted reply is for this call
        try:
            request = request_for(client, model=SERVED_MODEL)
            if streamed:
                await collect(client.stream(request))
            else:
                await client.complete(request)
        except BaseException as exc:
            return exc
        finally:
            await client.aclose()
        return None

    return run(go())


# --- streamed tool calls ----------------------------------------------------------------------


def _weather_reply() -> Reply:
    return reply_tool_call("get_weather", {"city": "Paris"}, content="Let me check. ")


def _assemble(chunks: list[BackendChunk], backend: str) -> tuple[str, list[ToolCall], str | None]:
    calls = CallAssembler()
    text, finish = "", None
    for chunk in chunks:
        assert isinstance(chunk, BackendChunk), f"stream() yielded {type(chunk).__name__}"
        text += chunk.text
        for fragment in chunk.tool_calls:
            calls.add(fragment)
        finish = chunk.finish_reason or finish
    return text, calls.assemble(backend), finish


def test_a_streamed_tool_call_arrives_canonical_and_matches_complete(subject: Subject) -> None:
    async def go(url: str, fake: ScriptedBackend) -> tuple[AssistantTurn, list[BackendChunk]]:
        client = await started(subject.client(url))
        try:
            fake.push(_weather_reply(), _weather_reply())
            request = request_for(client, tools=[WEATHER_TOOL])
            turn = await client.complete(request)
            chunks = await collect(client.stream(request_for(client, tools=[WEATHER_TOOL])))
        finally:
            await client.aclose()
        return turn, chunks

    with served(subject) as (fake, url):
        turn, chunks = run(go(url, fake))
    text, calls, finish = _assemble(chunks, subject.spec.name)
    assert [c.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert calls[0].id, "an assembled call needs an id"
    assert text.strip() == "Let me check."
    assert finish == "tool_calls"
    assert [(c.name, json.loads(c.arguments)) for c in turn.tool_calls] == [
        ("get_weather", {"city": "Paris"})]
    assert turn.content.strip() == "Let me check." and turn.finish_reason == "tool_calls"


def test_a_streamed_tool_call_reaches_an_openai_client_through_forge(subject: Subject) -> None:
    from forge_core.app import make_app, wire_state

    async def go(url: str, fake: ScriptedBackend) -> httpx.Response:
        client = await started(subject.client(url))
        state = wire_state(_config(subject, url), subject.spec, client)
        state.started = True
        app = make_app(state)
        fake.push(_weather_reply())
        body = {"model": client.models()[0].key if client.models() else SERVED_MODEL,
                "messages": [{"role": "user", "content": "weather?"}],
                "tools": [WEATHER_TOOL], "stream": True}
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://forge.test", timeout=30
            ) as http:
                return await http.post("/v1/chat/completions", json=body)
        finally:
            await client.aclose()

    with served(subject) as (fake, url):
        response = run(go(url, fake))
    assert response.status_code == 200, response.text
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    calls: dict[int, dict[str, str]] = {}
    for event in events[:-1]:
        for choice in json.loads(event).get("choices", []):
            for part in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(part["index"], {"name": "", "arguments": ""})
                call["name"] += part.get("function", {}).get("name") or ""
                call["arguments"] += part.get("function", {}).get("arguments") or ""
    assert [c["name"] for c in calls.values()] == ["get_weather"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}


def _config(subject: Subject, url: str) -> ServeConfig:
    return ServeConfig(backend=settings_for(subject.spec, subject.harness, url),
                       plugin=subject.spec.name)


# --- cancellation -----------------------------------------------------------------------------


def test_closing_a_stream_cancels_the_backend_request(subject: Subject) -> None:
    long = Reply(message={"role": "assistant", "content": " ".join(["word"] * 200)},
                 delay=0.05)

    async def go(url: str, fake: ScriptedBackend) -> None:
        client = await started(subject.client(url))
        try:
            fake.push(long)
            stream = client.stream(request_for(client))
            first = await anext(stream)
            assert first.text or first.reasoning or first.tool_calls is not None
            await stream.aclose()  # what forge does when its client disconnects
            deadline = time.monotonic() + CANCEL_DEADLINE
            while fake.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    with served(subject) as (fake, url):
        run(go(url, fake))
        assert fake.cancelled == 1 and fake.in_flight == 0, (
            "the backend kept generating after the stream was closed"
        )


# --- readiness --------------------------------------------------------------------------------


def test_readiness_reports_a_reason_and_never_raises(subject: Subject) -> None:
    async def status_of(url: str) -> BackendStatus:
        client = subject.client(url, timeout=TIMEOUT)
        try:
            return await client.status()
        finally:
            await client.aclose()

    with served(subject) as (_fake, url):
        up = run(status_of(url))
    assert isinstance(up, BackendStatus) and up.ready, up.detail
    down = run(status_of(f"http://127.0.0.1:{free_port()}"))
    assert isinstance(down, BackendStatus) and not down.ready
    assert down.detail.strip(), "a backend that is not ready must say why"


# --- identity ---------------------------------------------------------------------------------


def test_the_identity_rule_is_applied_and_the_wire_name_is_sent(subject: Subject) -> None:
    from forge_core.app import make_app, wire_state

    async def go(url: str, fake: ScriptedBackend) -> tuple[list[ModelIdentity], httpx.Response]:
        client = await started(subject.client(url))
        identities = list(client.models())
        state = wire_state(_config(subject, url), subject.spec, client)
        state.started = True
        fake.push(reply_text("hello"))
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=make_app(state)), base_url="http://forge.test",
            ) as http:
                key = identities[0].key if identities else SERVED_MODEL
                response = await http.post("/v1/chat/completions", json={
                    "model": key, "messages": [{"role": "user", "content": "hi"}]})
        finally:
            await client.aclose()
        return identities, response

    with served(subject) as (fake, url):
        identities, response = run(go(url, fake))
        received = fake.requests[-1].get("model")
    assert identities, "after start() against a live backend, models() must name the model"
    identity = identities[0]
    assert identity == subject.spec.derive_identity(identity.wire_name), (
        "models() must apply the registered derive_identity rule to the served name"
    )
    assert any(SERVED_MODEL in name for name in identity.names), identity
    assert response.status_code == 200, response.text
    assert received == identities[0].wire_name, (
        f"the backend received model {received!r}, not the wire name "
        f"{identities[0].wire_name!r}"
    )


# --- constrained retry ------------------------------------------------------------------------


def test_constrained_retry_when_declared(subject: Subject) -> None:
    from forge_core.app import make_app, wire_state

    if not subject.spec.capabilities.constrained_decoding:
        client = subject.client("http://127.0.0.1:9")
        body = {"model": SERVED_MODEL, "messages": [], "tools": [WEATHER_TOOL]}
        assert client.constrain_retry(body, WEATHER_TOOL) is body, (
            "constrain_retry changed the body but constrained_decoding is not declared"
        )
        run(client.aclose())
        return
    client = subject.client("http://127.0.0.1:9")
    body = {"model": SERVED_MODEL, "messages": [{"role": "user", "content": "x"}],
            "tools": [WEATHER_TOOL]}
    before = copy.deepcopy(body)
    constrained = client.constrain_retry(body, WEATHER_TOOL)
    run(client.aclose())
    assert body == before, "constrain_retry must not mutate the body it receives"
    assert isinstance(constrained, dict) and constrained != body, (
        "constrained_decoding is declared but constrain_retry left the body unchanged"
    )

    async def go(url: str, fake: ScriptedBackend) -> httpx.Response:
        client = await started(subject.client(url))
        state = wire_state(_config(subject, url), subject.spec, client)
        state.started = True
        fake.push(reply_tool_call("get_weather", {"town": "Paris"}),  # invalid: no city
                  reply_tool_call("get_weather", {"city": "Paris"}))
        key = client.models()[0].key if client.models() else SERVED_MODEL
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=make_app(state)), base_url="http://forge.test",
            ) as http:
                return await http.post("/v1/chat/completions", json={
                    "model": key, "messages": [{"role": "user", "content": "weather?"}],
                    "tools": [WEATHER_TOOL]})
        finally:
            await client.aclose()

    with served(subject) as (fake, url):
        response = run(go(url, fake))
        retried = len(fake.requests)
    assert response.status_code == 200, response.text
    assert retried >= 2
    assert "constrained" in response.headers.get("x-forge-guardrail", "").split(",")
    calls = response.json()["choices"][0]["message"]["tool_calls"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
