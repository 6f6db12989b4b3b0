"""A slow backend does not hold the 200 back past the grace: keep-alives flow meanwhile."""

from __future__ import annotations

import httpx

from forge_core.app import make_app
from forge_core.config import GuardrailSettings
from forge_core.testing import (
    ScriptedBackend,
    build_state,
    chat,
    reply_error,
    reply_text,
    serve_on_loopback,
)


def test_slow_first_event_starts_stream_with_keepalives() -> None:
    backend = ScriptedBackend().push(reply_text("late answer", delay=0.6))
    with serve_on_loopback(backend.app) as backend_url:
        state = build_state(
            httpx.AsyncHTTPTransport(), model=None,
            guardrails=GuardrailSettings(keepalive_interval=0.1), stream_start_grace=0.1,
        )
        state.client._http.base_url = httpx.URL(backend_url)  # the fake on loopback
        with serve_on_loopback(make_app(state)) as url, httpx.stream(
            "POST", url + "/v1/chat/completions", json=chat(stream=True), timeout=30
        ) as response:
            assert response.status_code == 200
            raw = b"".join(response.iter_bytes())
    text = raw.decode()
    assert text.count(": keep-alive\n\n") >= 2
    assert text.index(": keep-alive") < text.index("late")
    assert text.endswith("data: [DONE]\n\n")


def test_fast_failure_still_gets_a_real_status() -> None:
    backend = ScriptedBackend().push(reply_error(500, {"error": {"message": "boom"}}))
    with serve_on_loopback(backend.app) as backend_url:
        state = build_state(httpx.AsyncHTTPTransport(), stream_start_grace=5.0)
        state.client._http.base_url = httpx.URL(backend_url)
        with serve_on_loopback(make_app(state)) as url:
            response = httpx.post(url + "/v1/chat/completions", json=chat(stream=True))
    assert response.status_code == 502
    assert "boom" in response.json()["error"]["message"]
