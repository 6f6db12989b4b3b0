"""Helpers for the end-to-end guardrail tests (imported by the test modules, not a conftest)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from forge_core.app import AppState
from forge_core.backend import BackendSettings
from forge_core.config import GuardrailSettings, ServeConfig
from forge_core.engine import Engine
from forge_core.limiter import Limiter
from forge_core.plugins import PluginHost
from forge_core.testing import WEATHER_TOOL, ScriptedBackend

SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Web search",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1},
                "limit": {"type": "integer", "minimum": 1, "maximum": 10},
            },
            "required": ["query"],
        },
    },
}

TOOLS = [WEATHER_TOOL, SEARCH_TOOL]


def llamafile_state(
    backend: ScriptedBackend,
    guardrails: GuardrailSettings | None = None,
    options: dict[str, Any] | None = None,
) -> AppState:
    """forge with the real llamafile plugin client (constrained decoding) in front of a fake;
    ``options`` are the plugin's (``{"constrain_with": "schema"}``)."""
    from forge_llamafile.plugin import forge_register_backends

    specs: list[Any] = []
    forge_register_backends(specs.append)
    spec = specs[0]
    from forge_llamafile.client import LlamafileClient

    settings = BackendSettings(
        backend_url="http://backend.test", model="fake-model", timeout=30, options=options or {}
    )
    client = LlamafileClient(settings, transport=httpx.ASGITransport(app=backend.app))
    config = ServeConfig(
        backend=settings, plugin="llamafile", guardrails=guardrails or GuardrailSettings()
    )
    host = PluginHost()
    engine = Engine(client, spec, config.guardrails, host.rescue_parsers(), host.transforms())
    return AppState(
        config=config, spec=spec, client=client, engine=engine, limiter=Limiter(0, 8)
    )


@dataclass
class Assembled:
    """A streamed OpenAI answer put back together the way an SDK client would."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    keepalives: int = 0
    roles: int = 0
    errors: list[Any] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    done: int = 0
    first_deltas: list[dict[str, Any]] = field(default_factory=list)
    """The first delta of each tool call, to check the canonical form."""


def assemble(raw: str) -> Assembled:
    """Parse an SSE body strictly: every event is ``data:`` or a comment, blank-line framed."""
    out = Assembled()
    assert raw.endswith("\n\n"), "the stream must end with a blank line"
    calls: dict[int, dict[str, Any]] = {}
    for block in raw.split("\n\n")[:-1]:
        if block.startswith(":"):
            out.keepalives += 1
            continue
        assert block.startswith("data: ") and "\n" not in block, block
        payload = block[6:]
        if payload == "[DONE]":
            out.done += 1
            continue
        assert out.done == 0, "an event after [DONE]"
        data = json.loads(payload)
        if "error" in data:
            out.errors.append(data["error"])
            continue
        if data.get("usage"):
            out.usage = data["usage"]
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("role"):
                out.roles += 1
            out.content += delta.get("content") or ""
            out.reasoning += delta.get("reasoning_content") or ""
            for piece in delta.get("tool_calls") or []:
                index = piece["index"]
                if index not in calls:
                    out.first_deltas.append(piece)
                    calls[index] = {"id": piece.get("id"), "name": "", "arguments": ""}
                function = piece.get("function") or {}
                calls[index]["name"] += function.get("name") or ""
                calls[index]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                out.finish_reasons.append(choice["finish_reason"])
    out.tool_calls = [calls[i] for i in sorted(calls)]
    return out


def message_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in message.get("tool_calls") or []
    ]


def plain_roles_alternate(messages: list[dict[str, Any]]) -> bool:
    """No two consecutive plain user (or assistant) messages: what strict templates demand."""
    for before, after in zip(messages, messages[1:], strict=False):
        plain = all(not m.get("tool_calls") for m in (before, after))
        if plain and before["role"] == after["role"] and before["role"] in ("user", "assistant"):
            return False
    return True


def last_messages(request: dict[str, Any], count: int) -> list[dict[str, Any]]:
    return request["messages"][-count:]


def loopback_state(backend_url: str, guardrails: GuardrailSettings | None = None) -> AppState:
    """forge's real engine in front of an OpenAI-wire server at ``backend_url`` (over TCP)."""
    from forge_core.openai_client import OpenAIWireClient
    from forge_core.testing import fake_spec

    spec = fake_spec()
    settings = BackendSettings(backend_url=backend_url, model=None, timeout=30)
    client = OpenAIWireClient(settings, name=spec.name, base_url=backend_url)
    config = ServeConfig(
        backend=settings, plugin=spec.name, guardrails=guardrails or GuardrailSettings()
    )
    host = PluginHost()
    engine = Engine(client, spec, config.guardrails, host.rescue_parsers(), host.transforms())
    return AppState(
        config=config, spec=spec, client=client, engine=engine, limiter=Limiter(0, 8)
    )
