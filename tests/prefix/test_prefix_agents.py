"""Prefix stability with the real agents: a two-turn Claude Code session and a two-turn opencode
session (each with a tool round trip) through forge, in front of a rule-based fake backend.

Every request of the agent's main loop must reach the backend as an extension of the one
before (same tools, same serialization, earlier messages untouched), and Claude Code's billing
header must never reach it. Marked ``claude_code``; each test is skipped without its agent
(``scripts/install-claude-code.sh``, ``scripts/install-opencode.sh``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefix_support import canonical
from starlette.requests import Request
from starlette.responses import Response

from forge_core.app import make_app
from forge_core.testing import (
    ScriptedBackend,
    build_state,
    reply_text,
    reply_tool_call,
    serve_on_loopback,
)

pytestmark = pytest.mark.claude_code

MARKER = "forge-prefix-5d1e"
COMMAND = f"echo {MARKER}-$((6*7))"
OUTPUT = f"{MARKER}-42"


class RuleBackend(ScriptedBackend):
    """After a tool result, report it; asked to run the marker, call the shell tool."""

    async def _chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        messages = body["messages"]
        tools = [t["function"]["name"] for t in body.get("tools") or []]
        shell = next((n for n in tools if n.lower() == "bash"), None)
        asked = any(m["role"] == "user" and MARKER in json.dumps(m["content"]) for m in messages)
        if messages[-1]["role"] == "tool":
            self.replies = [reply_text(f"Tool said: {messages[-1]['content']}")]
        elif shell and asked and not any(m["role"] == "tool" for m in messages):
            command = {"command": COMMAND, "description": "Print the marker"}
            self.replies = [reply_tool_call(shell, command, content="Running it.")]
        else:
            self.replies = [reply_text("hi from forge")]
        return await super()._chat(request)


@pytest.fixture
def forge_url() -> Iterator[tuple[str, RuleBackend]]:
    backend = RuleBackend()
    with serve_on_loopback(make_app(build_state(backend, any_model=True))) as url:
        yield url, backend


def main_loop(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The agent's conversation requests (with tools), leaving out titles and the like."""
    return [r for r in requests if r.get("tools")]


def assert_prefix_extensions(sent: list[dict[str, Any]]) -> None:
    assert len(sent) >= 3, [m["role"] for r in sent for m in r["messages"]]
    for before, after in zip(sent, sent[1:], strict=False):
        assert canonical(after["tools"]) == canonical(before["tools"])
        old, new = before["messages"], after["messages"]
        assert len(new) > len(old)
        for position, message in enumerate(old):
            assert canonical(new[position]) == canonical(message), (
                f"message {position} ({message['role']}) changed between requests"
            )


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env={"PATH": os.environ.get("PATH", ""), **env},
                          capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.skipif(shutil.which("claude") is None, reason="Claude Code (claude) not on PATH")
def test_a_claude_code_session_reaches_the_backend_as_prefix_extensions(
    forge_url: tuple[str, RuleBackend], tmp_path: Path
) -> None:
    url, backend = forge_url
    env = {
        "HOME": str(tmp_path), "ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "dummy",
        "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    first = run(["claude", "-p", f"Run the {MARKER} command.", "--allowedTools", "Bash"],
                tmp_path, env)
    assert first.returncode == 0, first.stderr
    assert f"Tool said: {OUTPUT}" in first.stdout
    second = run(["claude", "-p", "--continue", "say hi", "--allowedTools", "Bash"],
                 tmp_path, env)
    assert second.returncode == 0, second.stderr
    assert "hi from forge" in second.stdout
    assert not any(b"x-anthropic-billing-header" in raw for raw in backend.raw_requests)
    assert_prefix_extensions(main_loop(backend.requests))


@pytest.mark.skipif(shutil.which("opencode") is None, reason="opencode not on PATH")
def test_an_opencode_session_reaches_the_backend_as_prefix_extensions(
    forge_url: tuple[str, RuleBackend], tmp_path: Path
) -> None:
    url, backend = forge_url
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    # opencode reads its project directory from $PWD and its provider from opencode.json.
    (work / "opencode.json").write_text(json.dumps({
        "$schema": "https://opencode.ai/config.json",
        "provider": {"forge": {
            "npm": "@ai-sdk/openai-compatible", "name": "forge",
            "options": {"baseURL": url + "/v1", "apiKey": "dummy"},
            "models": {"fake-model": {"name": "fake", "tool_call": True,
                                      "limit": {"context": 32768, "output": 1024}}},
        }},
        "model": "forge/fake-model", "small_model": "forge/fake-model",
        "permission": {"bash": "allow"}, "share": "disabled", "autoupdate": False,
    }))
    env = {"HOME": str(home), "PWD": str(work), "OPENCODE_DISABLE_AUTOUPDATE": "1",
           "OPENCODE_DISABLE_MODELS_FETCH": "1"}
    first = run(["opencode", "run", f"Run the {MARKER} command.", "-m", "forge/fake-model"],
                work, env)
    assert first.returncode == 0, first.stderr
    assert f"Tool said: {OUTPUT}" in first.stdout + first.stderr
    second = run(["opencode", "run", "--continue", "say hi", "-m", "forge/fake-model"], work, env)
    assert second.returncode == 0, second.stderr
    assert "hi from forge" in second.stdout + second.stderr
    tool_results = [m for m in backend.requests[-1]["messages"] if m["role"] == "tool"]
    assert tool_results and OUTPUT in json.dumps(tool_results)
    assert_prefix_extensions(main_loop(backend.requests))
