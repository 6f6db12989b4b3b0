"""The request inspector: bounded, redacted, every attempt with forge's verdict, and a page a
person reads in a real headless Chromium (screenshot saved for a look)."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest

from forge_core.testing import (
    WEATHER_TOOL,
    ScriptedBackend,
    build_state,
    chat,
    forge_client,
    reply_text,
    reply_tool_call,
    serve_on_loopback,
)

KEY = "sk-forge-inspector-secret"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SCREENSHOT = Path(os.environ.get("FORGE_SCREENSHOT_DIR", "/tmp")) / "forge-inspector.png"


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


async def test_each_attempt_with_output_and_verdict_and_what_the_client_got() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("get_weather", {"town": "Oslo"}),  # rejected: schema
        reply_tool_call("get_weather", {"city": "Oslo"}),  # accepted
    )
    async with forge_client(backend, inspect=5, api_key=KEY) as http:
        body = chat("weather in Oslo?", tools=[WEATHER_TOOL], api_key=KEY)
        r = await http.post("/v1/chat/completions", json=body, headers=auth())
        assert r.status_code == 200
        assert (await http.get("/forge/requests")).status_code == 401  # the key rule
        snap = (await http.get("/forge/requests", headers=auth())).json()
    assert snap["size"] == 5 and snap["seen"] == 1
    [entry] = snap["requests"]
    assert entry["path"] == "/v1/chat/completions" and entry["status"] == 200
    assert entry["guardrails"] == ["retry:schema"]
    assert entry["request"]["messages"][0]["content"] == "weather in Oslo?"
    first, second = entry["attempts"]
    assert first["verdict"] == "rejected: retried" and first["notes"] == ["retry:schema"]
    assert json.loads(first["output"]["tool_calls"][0]["arguments"]) == {"town": "Oslo"}
    assert second["verdict"] == "accepted"
    assert second["sent"]["messages"][-1]["role"] == "tool"  # the corrective turn forge sent
    got = entry["response"]["choices"][0]["message"]["tool_calls"][0]["function"]
    assert json.loads(got["arguments"]) == {"city": "Oslo"}
    # The key never appears, wherever the client put it.
    assert KEY not in json.dumps(snap)
    assert entry["request"]["api_key"] == "[redacted]"


async def test_streamed_answers_are_kept_as_events_and_the_ring_is_bounded() -> None:
    backend = ScriptedBackend().push(*(reply_text(f"answer {i}") for i in range(4)))
    async with forge_client(backend, inspect=2) as http:
        for i in range(4):
            r = await http.post("/v1/chat/completions", json=chat(f"q{i}", stream=True))
            assert r.status_code == 200
        await http.get("/v1/models")  # not a chat request: not kept
        snap = (await http.get("/forge/requests")).json()
    assert snap["seen"] == 4 and [e["request"]["messages"][0]["content"]
                                  for e in snap["requests"]] == ["q3", "q2"]
    newest = snap["requests"][0]
    assert newest["streamed"] is True
    events = newest["response"]["events"]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if isinstance(e, dict) and e.get("choices"))
    assert text == "answer 3" and events[-1] == "[DONE]"
    assert newest["attempts"][0]["output"]["content"] == "answer 3"


async def test_inspector_is_off_by_default() -> None:
    async with forge_client(ScriptedBackend()) as http:
        assert (await http.get("/forge/requests")).status_code == 404
        assert (await http.get("/forge/")).status_code == 404


async def test_page_asks_a_browser_for_the_key_with_basic_auth() -> None:
    async with forge_client(ScriptedBackend(), inspect=3, api_key=KEY) as http:
        r = await http.get("/forge/")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        basic = base64.b64encode(f"forge:{KEY}".encode()).decode()
        ok = await http.get("/forge/", headers={"Authorization": f"Basic {basic}"})
        assert ok.status_code == 200 and "forge inspector" in ok.text
        assert "default-src 'none'" in ok.headers["content-security-policy"]


def test_page_in_a_real_headless_browser() -> None:
    if not CHROMIUM:
        if os.environ.get("FORGE_REQUIRE_BROWSER"):
            pytest.fail("FORGE_REQUIRE_BROWSER is set but chromium is not installed")
        pytest.skip("chromium is not installed (apt-get install chromium; scripts/setup.sh --dev)")
    playwright = pytest.importorskip("playwright.sync_api")
    backend = ScriptedBackend().push(
        reply_text('<tool_call>{"name": "get_weather", "arguments": {"town": "Oslo"}}'
                   "</tool_call>"),
        reply_tool_call("get_weather", {"city": "Oslo"}),
        reply_text("<b>not bold</b> & a prose answer"),
    )
    state = build_state(backend, inspect=10, api_key=KEY)
    from forge_core.app import make_app

    with serve_on_loopback(make_app(state)) as url:
        import httpx

        with httpx.Client(base_url=url, headers=auth(), timeout=30) as http:
            assert http.post("/v1/chat/completions",
                             json=chat("weather?", tools=[WEATHER_TOOL])).status_code == 200
            assert http.post("/v1/chat/completions", json=chat("hello")).status_code == 200
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(
                    http_credentials={"username": "forge", "password": KEY},
                    viewport={"width": 1200, "height": 900},
                )
                page = context.new_page()
                external: list[str] = []
                page.on("request", lambda req: external.append(req.url)
                        if not req.url.startswith(url) else None)
                response = page.goto(f"{url}/forge/")
                assert response is not None and response.status == 200
                assert page.title() == "forge inspector"
                summaries = page.locator("details.req > summary")
                assert summaries.count() == 2
                # Newest first: the prose answer, then the rescued-and-retried call.
                assert "rescued:hermes" in summaries.nth(1).inner_text()
                summaries.nth(1).click()
                opened = page.locator("details.req").nth(1)
                assert opened.locator(".attempt").count() == 2
                assert "rejected: retried" in opened.locator(".attempt").nth(0).inner_text()
                assert "accepted" in opened.locator(".attempt").nth(1).inner_text()
                summaries.nth(0).click()
                # Model text is shown as text, never as markup.
                assert page.locator("details.req pre b").count() == 0
                assert "<b>not bold</b>" in page.locator("details.req").nth(0).inner_text()
                assert KEY not in page.content()
                page.screenshot(path=str(SCREENSHOT), full_page=True)
                assert external == []  # no external assets
            finally:
                browser.close()
    assert SCREENSHOT.stat().st_size > 10_000


async def test_large_bodies_are_cut_and_the_cut_is_noted() -> None:
    big = "x" * 200_000
    backend = ScriptedBackend().push(reply_text("short answer"))
    async with forge_client(backend, inspect=1) as http:
        assert (await http.post("/v1/chat/completions", json=chat(big))).status_code == 200
        [entry] = (await http.get("/forge/requests")).json()["requests"]
    assert entry["request"]["truncated_bytes"] > 100_000
    assert len(entry["request"]["text"]) == 64 * 1024
    sent = entry["attempts"][0]["sent"]
    assert sent["truncated_bytes"] > 100_000 and len(sent["text"]) == 64 * 1024


async def test_process_secrets_from_redact_are_scrubbed_too() -> None:
    redact = pytest.importorskip("forge_core.redact")
    secret = "upstream-backend-key-0f9e8d7c6b5a"
    redact.register(secret)  # as a plugin registers its backend key
    backend = ScriptedBackend().push(reply_text(f"the key is {secret}"))
    async with forge_client(backend, inspect=1) as http:
        assert (await http.post("/v1/chat/completions", json=chat(f"echo {secret}"))
                ).status_code == 200
        text = (await http.get("/forge/requests")).text
    assert secret not in text and "[redacted]" in text
