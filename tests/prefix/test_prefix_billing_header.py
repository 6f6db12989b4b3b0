"""The ``strip-billing-header`` transform: what it removes, for which backends, and its switch."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from forge_anthropic.client import AnthropicClient, is_anthropic_api
from forge_anthropic.plugin import forge_register_backends

from forge_core.backend import BackendSettings, BackendSpec
from forge_core.builtin_transforms import STRIP_BILLING_HEADER, strip_anthropic, strip_openai
from forge_core.cli import build_state, main
from forge_core.config import GuardrailSettings, ServeConfig
from forge_core.engine import Engine
from forge_core.errors import PluginError
from forge_core.plugins import PluginHost
from forge_core.protocols import ANTHROPIC

HEADER = "x-anthropic-billing-header: cc_version=2.1.331.471; cc_entrypoint=sdk-cli; cch=9f2c1;"


def claude_code_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "local",
        "max_tokens": 1000,
        "system": [
            {"type": "text", "text": HEADER},
            {"type": "text", "text": "You are Claude Code.",
             "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


def test_the_openai_body_loses_only_the_header_line() -> None:
    body = {"messages": [{"role": "system", "content": f"{HEADER}\n\nYou are X."},
                         {"role": "user", "content": "hi"}]}
    out = strip_openai(body)
    assert out is not None and out["messages"] == [
        {"role": "system", "content": "You are X."}, {"role": "user", "content": "hi"}
    ]
    assert body["messages"][0]["content"].startswith(HEADER)  # not mutated


def test_a_system_message_holding_only_the_header_is_dropped() -> None:
    out = strip_openai({"messages": [{"role": "system", "content": HEADER},
                                     {"role": "user", "content": "hi"}]})
    assert out is not None and out["messages"] == [{"role": "user", "content": "hi"}]


def test_list_content_and_anthropic_system_blocks() -> None:
    parts = {"messages": [{"role": "system", "content": [{"type": "text", "text": HEADER},
                                                         {"type": "text", "text": "X"}]}]}
    out = strip_openai(parts)
    assert out is not None and out["messages"][0]["content"] == [{"type": "text", "text": "X"}]
    anthropic = strip_anthropic(claude_code_body())
    assert anthropic is not None
    assert anthropic["system"] == claude_code_body()["system"][1:]  # cache_control kept
    assert strip_anthropic(claude_code_body(system=HEADER)) == {
        k: v for k, v in claude_code_body().items() if k != "system"
    }


@pytest.mark.parametrize("text", ["You are X.", "Say x-anthropic-billing-header: no", ""])
def test_anything_else_is_left_alone(text: str) -> None:
    assert strip_openai({"messages": [{"role": "system", "content": text}]}) is None
    assert strip_openai({"messages": [{"role": "user", "content": HEADER}]}) is None
    assert strip_anthropic({"system": text, "messages": []}) is None
    assert strip_openai({"messages": "not a list"}) is None


# --- which backends get it ---------------------------------------------------------------------


def anthropic_spec() -> BackendSpec:
    specs: list[BackendSpec] = []
    forge_register_backends(specs.append)
    return specs[0]


def sent_upstream(url: str, body: dict[str, Any], disabled: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the forge-anthropic client sends to ``url`` for ``body`` (one clean attempt)."""
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1},
        })

    settings = BackendSettings(backend_url=url, model="m", timeout=10)
    client = AnthropicClient(settings, transport=httpx.MockTransport(handler), environ={})
    host = PluginHost()
    transforms = [t for t in host.transforms() if t.name not in disabled]
    engine = Engine(client, anthropic_spec(), GuardrailSettings(), [], transforms)

    async def run() -> None:
        try:
            await engine.complete(ANTHROPIC.parse(body).call)
        finally:
            await client.aclose()

    asyncio.run(run())
    return seen[0]


def test_the_real_anthropic_api_gets_the_header_verbatim() -> None:
    assert is_anthropic_api("https://api.anthropic.com") and not is_anthropic_api("http://x:1")
    sent = sent_upstream("https://api.anthropic.com", claude_code_body())
    assert sent["system"][0]["text"] == HEADER


def test_another_anthropic_server_gets_the_verbatim_body_without_the_header() -> None:
    # The original is still forwarded verbatim (cache_control and all), minus the header.
    sent = sent_upstream("http://127.0.0.1:9", claude_code_body(metadata={"user_id": "u"}))
    assert sent["system"] == claude_code_body()["system"][1:]
    assert sent["metadata"] == {"user_id": "u"}


def test_switched_off_the_header_is_forwarded() -> None:
    sent = sent_upstream("http://127.0.0.1:9", claude_code_body(), disabled=(STRIP_BILLING_HEADER,))
    assert sent["system"][0]["text"] == HEADER


def test_no_transform_flag_removes_it_and_rejects_unknown_names() -> None:
    host = PluginHost()
    spec = anthropic_spec()
    settings = BackendSettings(backend_url="http://127.0.0.1:9", model="m", timeout=10)

    def engine_for(*names: str) -> Engine:
        config = ServeConfig(backend=settings, plugin="anthropic", disabled_transforms=names)
        return build_state(host, spec, config).engine  # type: ignore[no-any-return]

    assert [t.name for t in engine_for().transforms] == [STRIP_BILLING_HEADER]
    assert engine_for(STRIP_BILLING_HEADER).transforms == []
    with pytest.raises(PluginError, match="no such request transform"):
        engine_for("strip-nothing")


def test_forge_plugins_lists_it_with_its_order() -> None:
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)["request_transforms"]
    first = {k: v for k, v in listed[0].items() if k in ("name", "order")}
    assert first == {"name": STRIP_BILLING_HEADER, "order": 10}
