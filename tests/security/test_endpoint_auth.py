"""With FORGE_API_KEY set, only ``/health`` is open: ``/v1/models`` and ``/ready`` need the
key too. ``/ready`` shows the backend URL without credentials and does not cost a backend
request per call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from plugin_states import models_answer, transport_state

from forge_core.app import make_app

KEY = "forge-auth-key-Zp4Lq8"


class CountingBackend:
    def __init__(self) -> None:
        self.gets = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.gets += 1
            return models_answer(request)
        return httpx.Response(500, json={"error": {"message": "unused"}})


async def forge(state: Any) -> tuple[httpx.AsyncClient, Any]:
    app = make_app(state)
    await state.client.start()
    state.started = True
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://forge.test")
    return http, state


@pytest.mark.parametrize("path", ["/v1/models", "/ready"])
async def test_models_and_ready_need_the_key(path: str) -> None:
    state = transport_state("llamafile", httpx.MockTransport(CountingBackend()), api_key=KEY)
    http, _ = await forge(state)
    async with http:
        missing = await http.get(path)
        wrong = await http.get(path, headers={"authorization": "Bearer nope"})
        anthropic_shape = await http.get(path, headers={"anthropic-version": "2023-06-01"})
        bearer = await http.get(path, headers={"authorization": f"Bearer {KEY}"})
        x_api_key = await http.get(path, headers={"x-api-key": KEY})
    await state.client.aclose()
    for r in (missing, wrong):
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert anthropic_shape.status_code == 401
    assert anthropic_shape.json()["type"] == "error"
    assert anthropic_shape.json()["error"]["type"] == "authentication_error"
    assert bearer.status_code == 200 and x_api_key.status_code == 200


async def test_health_stays_open() -> None:
    state = transport_state("llamafile", httpx.MockTransport(CountingBackend()), api_key=KEY)
    http, _ = await forge(state)
    async with http:
        r = await http.get("/health")
    await state.client.aclose()
    assert r.status_code == 200 and r.json()["status"] == "ok"


async def test_ready_does_not_probe_the_backend_per_call() -> None:
    backend = CountingBackend()
    state = transport_state("llamafile", httpx.MockTransport(backend))
    http, _ = await forge(state)
    async with http:
        before = backend.gets
        first = await http.get("/ready")
        one_probe = backend.gets - before  # a probe may take several GETs (health, props...)
        sequential = [await http.get("/ready") for _ in range(10)]
        concurrent = await asyncio.gather(*(http.get("/ready") for _ in range(20)))
    await state.client.aclose()
    assert one_probe >= 1
    assert all(r.status_code == 200 for r in [first, *sequential, *concurrent])
    # 30 more calls: at most one more probe (if the cache expired meanwhile), not 30.
    assert backend.gets - before <= 2 * one_probe


async def test_ready_shows_the_backend_url_without_credentials() -> None:
    state = transport_state("openai", httpx.MockTransport(CountingBackend()))
    # The same client built from a URL with userinfo, as --backend-url would give it.
    from forge_openai.plugin import GenericOpenAIClient

    settings = state.config.backend
    import dataclasses

    client = GenericOpenAIClient(
        dataclasses.replace(settings, backend_url="http://admin:hunter2secret@backend.test/v1"),
        transport=httpx.MockTransport(CountingBackend()),
    )
    assert client.base_url == "http://backend.test"
    await state.client.aclose()
    from plugin_states import plugin_spec

    from forge_core.cli import build_state

    host, spec = plugin_spec("openai")
    state = build_state(host, spec, state.config, client=client)
    http, _ = await forge(state)
    async with http:
        r = await http.get("/ready")
    await state.client.aclose()
    assert "hunter2secret" not in r.text and "admin" not in r.text
    assert r.json()["backend_url"] == "http://backend.test"
