"""Secrets planted in every configurable place, searched for in every response and log line.

Planted: forge's own key (FORGE_API_KEY), a client's key, a wrong key, the backend key of the
openai plugin (--backend-api-key-env) and of the anthropic plugin (--anthropic-api-key-env), a
--backend-header value, and a password in --backend-url's userinfo, for every plugin. The
backend is a loopback gateway that echoes every request header in its error body (as JSON and
as raw header lines), so a copied error body would hand the secrets out.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import pytest
from plugin_states import PLUGINS, EchoBackend, all_logs, cli_state

from forge_core.app import make_app
from forge_core.cli import ready_line
from forge_core.managed import free_port
from forge_core.testing import serve_on_loopback

FORGE_KEY = "forge-key-7Qx9Lm2Pz"
CLIENT_KEY = "client-key-Vb3Nc8Rt1"
WRONG_KEY = "wrong-key-Hd5Kw0Ys4"
BACKEND_KEY = "sk-backend-Jf6Tq2Wz8"
HEADER_SECRET = "gw-token-Ma1Xe7Uc3"
URL_USER, URL_PASSWORD = "forgeuser", "pw-Rn4Gk9Sd5"
BASIC = base64.b64encode(f"{URL_USER}:{URL_PASSWORD}".encode()).decode()

SECRETS = (FORGE_KEY, CLIENT_KEY, WRONG_KEY, BACKEND_KEY, HEADER_SECRET, URL_PASSWORD, BASIC)
HEADER_LINE = re.compile(
    r"(authorization|x-api-key)[\"']?\s*[:=]\s*[\"']?(bearer|basic)?\s*(?!\[redacted\])\w",
    re.IGNORECASE,
)

GOOD = {"x-api-key": FORGE_KEY, "authorization": f"Bearer {CLIENT_KEY}"}
BAD = {"authorization": f"Bearer {WRONG_KEY}"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


def find_leaks(text: str) -> list[str]:
    leaks = [s for s in SECRETS if s in text]
    leaks += [m.group(0) for m in HEADER_LINE.finditer(text)]
    return leaks


def plugin_options(plugin: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("FORGE_API_KEY", FORGE_KEY)
    if plugin == "openai":
        monkeypatch.setenv("SECRET_BACKEND_KEY", BACKEND_KEY)
        return {
            "backend_api_key_env": "SECRET_BACKEND_KEY",
            "backend_header": (f"X-Gateway-Token: {HEADER_SECRET}",),
        }
    if plugin == "anthropic":
        monkeypatch.setenv("SECRET_ANTHROPIC_KEY", BACKEND_KEY)
        return {"anthropic_api_key_env": "SECRET_ANTHROPIC_KEY"}
    return {}


def with_userinfo(url: str) -> str:
    return url.replace("http://", f"http://{URL_USER}:{URL_PASSWORD}@")


async def exercise(state: Any) -> list[str]:
    """Every endpoint, streamed and not, with a good and a bad key; all that came back."""
    seen = [ready_line(state)]
    app = make_app(state)
    await state.client.start()
    state.started = True
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://forge.test", timeout=30
        ) as http:
            calls: list[tuple[str, str, Any]] = [
                ("GET", "/health", None),
                ("GET", "/v1/models", None),
                ("GET", "/ready", None),
                ("POST", "/v1/chat/completions", CHAT),
                ("POST", "/v1/chat/completions", {**CHAT, "stream": True}),
                ("POST", "/v1/messages", MESSAGES),
                ("POST", "/v1/messages", {**MESSAGES, "stream": True}),
                ("POST", "/v1/messages/count_tokens", {"model": "m", "messages": CHAT["messages"]}),
            ]
            for headers in (GOOD, BAD):
                for method, path, body in calls:
                    r = await http.request(method, path, json=body, headers=headers)
                    seen.append(f"{path} {r.status_code} {dict(r.headers)} {r.text}")
    finally:
        await state.client.aclose()
    return seen


@pytest.mark.parametrize("plugin", PLUGINS)
async def test_no_secret_in_any_response_or_log_line(
    plugin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    echo = EchoBackend(status=500)
    with serve_on_loopback(echo.app) as url, all_logs() as logs:
        # httpx lets URL userinfo override an Authorization header: the openai plugin's
        # Bearer key is planted alone (its userinfo is covered by the unreachable case).
        backend_url = url if plugin == "openai" else with_userinfo(url)
        state = cli_state(
            plugin, backend_url=backend_url, model="m", **plugin_options(plugin, monkeypatch)
        )
        seen = await exercise(state)
    # The gateway did receive the secrets, so the echoed bodies carried them.
    received = " ".join(str(h) for h in echo.seen)
    assert BASIC in received or BACKEND_KEY in received
    if plugin == "openai":
        assert BACKEND_KEY in received and HEADER_SECRET in received
    # ...and forge passed the backend's failure on, without them.
    assert any(" 502 " in s for s in seen), seen
    leaks = {line: find_leaks(line) for line in seen + logs.lines if find_leaks(line)}
    assert not leaks, leaks


@pytest.mark.parametrize("plugin", PLUGINS)
async def test_unreachable_backend_url_never_shows_its_password(
    plugin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = with_userinfo(f"http://127.0.0.1:{free_port()}")  # nobody listens there
    with all_logs() as logs:
        state = cli_state(plugin, backend_url=url, model="m", **plugin_options(plugin, monkeypatch))
        assert URL_PASSWORD not in state.client.base_url
        seen = await exercise(state)
    assert any(" 502 " in s and "127.0.0.1" in s for s in seen), seen
    leaks = {line: find_leaks(line) for line in seen + logs.lines if find_leaks(line)}
    assert not leaks, leaks


@pytest.mark.parametrize("status", [400, 401, 404, 429, 503])
async def test_echoed_headers_are_scrubbed_for_every_status(
    status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    echo = EchoBackend(status=status)
    with serve_on_loopback(echo.app) as url, all_logs() as logs:
        state = cli_state(
            "openai", backend_url=url, model="m", **plugin_options("openai", monkeypatch)
        )
        seen = await exercise(state)
    assert any(f"answered HTTP {status}" in s for s in seen), seen
    leaks = {line: find_leaks(line) for line in seen + logs.lines if find_leaks(line)}
    assert not leaks, leaks
