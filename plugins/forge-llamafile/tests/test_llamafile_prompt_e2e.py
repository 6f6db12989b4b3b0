"""The prompt capability against a real llama-server (the demo model): the client gets native
tool calls that validate, streamed and not, although llama-server never sees ``tools``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from forge_core.app import make_app
from forge_core.backend import BackendSettings
from forge_core.cli import build_state
from forge_core.config import GuardrailSettings, ServeConfig
from forge_core.plugins import PluginHost
from forge_core.prompt_tools import to_prompt_body
from forge_core.testing import WEATHER_TOOL, serve_on_loopback

pytestmark = pytest.mark.llama

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def prompt_forge(llama_server: str) -> Iterator[str]:
    host = PluginHost()
    host.load(["llamafile"])
    spec = host.backends()["llamafile"]
    config = ServeConfig(
        backend=BackendSettings(backend_url=llama_server, model=None, timeout=120,
                                capability="prompt"),
        plugin="llamafile",
        guardrails=GuardrailSettings(max_retries=3),
    )
    with serve_on_loopback(make_app(build_state(host, spec, config))) as url:
        yield url


def ask(**extra: object) -> dict[str, object]:
    return {
        "model": MODEL, "temperature": 0, "max_tokens": 96, "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}], **extra,
    }


def test_required_call_comes_back_native_and_valid(prompt_forge: str) -> None:
    response = httpx.post(f"{prompt_forge}/v1/chat/completions", json=ask(), timeout=300)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather"
    assert isinstance(json.loads(call["arguments"])["city"], str)


def test_required_call_streamed(prompt_forge: str) -> None:
    with httpx.stream("POST", f"{prompt_forge}/v1/chat/completions", json=ask(stream=True),
                      timeout=300) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    events = [json.loads(line[6:]) for line in lines]
    assert not any("error" in e for e in events), events
    fragments = [c for e in events if e["choices"]
                 for c in e["choices"][0]["delta"].get("tool_calls") or []]
    assert fragments and fragments[0]["function"]["name"] == "get_weather"
    arguments = json.loads("".join(f["function"].get("arguments") or "" for f in fragments))
    assert isinstance(arguments["city"], str)


def test_ready_reports_the_prompt_capability(prompt_forge: str, llama_server: str) -> None:
    ready = httpx.get(f"{prompt_forge}/ready", timeout=10).json()
    assert ready["capability"] == "prompt"
    # The session server runs -c 8192 -np 4 with per-slot caches: a request gets one slot's
    # share, which is what /props reports and what forge enforces.
    props = httpx.get(f"{llama_server}/props", timeout=10).json()
    assert ready["context_budget"] == props["default_generation_settings"]["n_ctx"] == 2048


async def test_exact_token_count_includes_the_rendered_tools(llama_server: str) -> None:
    from forge_llamafile.client import LlamafileClient

    body = ask()
    counts = {}
    for capability in ("native", "prompt"):
        client = LlamafileClient(BackendSettings(backend_url=llama_server, model=None,
                                                 timeout=60, capability=capability))
        try:
            counts[capability] = await client.count_tokens(body)
        finally:
            await client.aclose()
    rendered = to_prompt_body(body)
    assert counts["prompt"] is not None and counts["native"] is not None
    # Rendered with the tools' full schemas and the format rules: far more than the question.
    assert counts["prompt"] > len(rendered["messages"][0]["content"]) // 8
