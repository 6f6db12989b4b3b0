"""A backend's rate limiting and overload reach the client as such, with Retry-After; a streamed
request answered without any event is a 502 naming the backend, never an empty 200.

Every plugin's wire, both client protocols, streamed and not; plus the real openai and
anthropic SDKs, whose own retry must happen (they retry on 429/503 and honour Retry-After).
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest
from plugin_states import PLUGINS, chat_path, error_payload, models_answer, transport_state

from forge_core.app import make_app
from forge_core.testing import forge_client, serve_on_loopback

OPENAI_BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_BODY = {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


class Failing:
    """A mock backend answering every generation request with ``status`` and Retry-After."""

    def __init__(self, plugin: str, status: int, retry_after: str | None = "7") -> None:
        self.plugin, self.status, self.retry_after = plugin, status, retry_after
        self.posts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return models_answer(request)
        if request.url.path != chat_path(self.plugin):
            return httpx.Response(404, json={"error": "no such path"})
        self.posts += 1
        headers = {"retry-after": self.retry_after} if self.retry_after else {}
        return httpx.Response(
            self.status, json=error_payload(self.plugin, "slow down please"), headers=headers
        )


async def ask(state: Any, protocol: str, stream: bool) -> httpx.Response:
    async with forge_client(None, state=state) as http:
        if protocol == "openai":
            return await http.post("/v1/chat/completions", json={**OPENAI_BODY, "stream": stream})
        return await http.post("/v1/messages", json={**ANTHROPIC_BODY, "stream": stream})


def error_type(response: httpx.Response, protocol: str) -> str:
    body = response.json()
    if protocol == "anthropic":
        assert body["type"] == "error"
    return str(body["error"]["type"])


def message(response: httpx.Response) -> str:
    return str(response.json()["error"]["message"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("plugin", PLUGINS)
async def test_backend_429_is_429_rate_limit_with_retry_after(
    plugin: str, protocol: str, stream: bool
) -> None:
    backend = Failing(plugin, 429)
    r = await ask(transport_state(plugin, httpx.MockTransport(backend)), protocol, stream)
    assert r.status_code == 429, r.text
    assert error_type(r, protocol) == "rate_limit_error"
    assert r.headers.get("retry-after") == "7"
    assert f"Backend '{plugin}'" in message(r) and "slow down please" in message(r)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("plugin", PLUGINS)
async def test_backend_503_is_503_overloaded_with_retry_after(
    plugin: str, protocol: str, stream: bool
) -> None:
    backend = Failing(plugin, 503)
    r = await ask(transport_state(plugin, httpx.MockTransport(backend)), protocol, stream)
    assert r.status_code == 503, r.text
    if protocol == "anthropic":
        assert error_type(r, protocol) == "overloaded_error"
    assert r.headers.get("retry-after") == "7"
    assert f"Backend '{plugin}'" in message(r)


async def test_anthropic_529_overloaded_is_503_overloaded() -> None:
    backend = Failing("anthropic", 529, retry_after="3")
    r = await ask(transport_state("anthropic", httpx.MockTransport(backend)), "anthropic", False)
    assert r.status_code == 503
    assert error_type(r, "anthropic") == "overloaded_error"
    assert r.headers.get("retry-after") == "3"


async def test_retry_after_is_not_invented_nor_copied_when_malformed() -> None:
    backend = Failing("openai", 429, retry_after="7\r\nX-Injected: yes")
    r = await ask(transport_state("openai", httpx.MockTransport(backend)), "openai", False)
    assert r.status_code == 429
    assert "retry-after" not in r.headers and "x-injected" not in r.headers


def test_openai_sdk_retries_a_backend_429_through_forge() -> None:
    backend = Failing("openai", 429, retry_after="1")
    state = transport_state("openai", httpx.MockTransport(backend))
    with serve_on_loopback(make_app(state)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=1, timeout=30)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(**OPENAI_BODY)  # type: ignore[call-overload]
    assert caught.value.status_code == 429
    assert backend.posts == 2  # the SDK's own retry went through forge to the backend


def test_openai_sdk_retries_a_backend_503_through_forge() -> None:
    backend = Failing("llamafile", 503, retry_after="1")
    state = transport_state("llamafile", httpx.MockTransport(backend))
    with serve_on_loopback(make_app(state)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=1, timeout=30)
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(**OPENAI_BODY)  # type: ignore[call-overload]
    assert caught.value.status_code == 503
    assert backend.posts == 2


def test_anthropic_sdk_retries_a_backend_429_through_forge() -> None:
    backend = Failing("ollama", 429, retry_after="1")
    state = transport_state("ollama", httpx.MockTransport(backend))
    with serve_on_loopback(make_app(state)) as url:
        client = anthropic.Anthropic(base_url=url, api_key="k", max_retries=1, timeout=30)
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(**ANTHROPIC_BODY)  # type: ignore[call-overload]
    assert caught.value.status_code == 429
    assert backend.posts == 2


# --- a streamed request answered without any event --------------------------------------------

NOT_A_STREAM: dict[str, tuple[int, str, bytes]] = {
    "html": (200, "text/html", b"<html><body><h1>Gateway login</h1></body></html>"),
    "json": (200, "application/json", b'{"id": "x", "object": "chat.completion", "choices": []}'),
    "no-content": (204, "text/plain", b""),
    "garbage": (200, "application/octet-stream", b"\x00\x01\xfe\xffnot an event stream\x07"),
    "event-stream-but-empty": (200, "text/event-stream", b": just a comment\n\n"),
}


@pytest.mark.parametrize("kind", list(NOT_A_STREAM))
@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
@pytest.mark.parametrize("plugin", PLUGINS)
async def test_streamed_request_without_any_event_is_502_naming_the_backend(
    plugin: str, protocol: str, kind: str
) -> None:
    status, media, content = NOT_A_STREAM[kind]

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return models_answer(request)
        return httpx.Response(status, content=content, headers={"content-type": media})

    r = await ask(transport_state(plugin, httpx.MockTransport(answer)), protocol, True)
    assert r.status_code == 502, r.text
    assert f"Backend '{plugin}'" in message(r)
