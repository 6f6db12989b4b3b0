"""Claude Code itself through forge (marked ``claude_code``; skipped without ``claude``).

forge runs with ``any_model`` in front of a rule-based fake backend, so a run takes seconds and
its answers are known. A recording layer around forge's app keeps what Claude Code sends
(path, query string, headers, body), so the tests pin down the traffic this version produces
and check that forge serves it: an answer, and a full tool round trip (Claude Code runs the
``Bash`` call forge returned and sends the result back). Install Claude Code with
``scripts/install-claude-code.sh``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from anthropic_e2e_support import state_for
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forge_core.app import make_app
from forge_core.testing import ScriptedBackend, reply_text, reply_tool_call, serve_on_loopback

pytestmark = [
    pytest.mark.claude_code,
    pytest.mark.skipif(shutil.which("claude") is None, reason="Claude Code (claude) not on PATH"),
]

MARKER = "forge-roundtrip-7f3a"
COMMAND = f"echo {MARKER}-$((6*7))"
OUTPUT = f"{MARKER}-42"
"""Only running the command gives OUTPUT: a refusal would quote COMMAND, not its result."""


class RuleBackend(ScriptedBackend):
    """Answers by rule: after a tool result, report it; asked to run the marker, call Bash."""

    async def _chat(self, request: Request) -> Response:
        body = json.loads(await request.body())  # starlette caches it for the base class
        messages = body["messages"]
        results = [m for m in messages if m["role"] == "tool"]
        if results:
            self.replies = [reply_text(f"Tool said: {results[-1]['content']}")]
        elif body.get("tools") and any(
            m["role"] == "user" and MARKER in json.dumps(m["content"]) for m in messages
        ):
            command = {"command": COMMAND, "description": "Print the marker"}
            self.replies = [reply_tool_call("Bash", command, content="Running it.")]
        else:
            self.replies = [reply_text("hi from forge")]
        return await super()._chat(request)


@dataclass
class Recorder:
    """An ASGI layer that keeps every request forge receives and the status it answers."""

    app: ASGIApp
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
            "body": b"",
        }
        self.seen.append(record)

        async def receiving() -> Message:
            message = await receive()
            record["body"] += message.get("body", b"")
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
            await send(message)

        await self.app(scope, receiving, sending)

    def messages_posts(self) -> list[dict[str, Any]]:
        return [
            {**r, "json": json.loads(r["body"])}
            for r in self.seen
            if r["method"] == "POST" and r["path"] == "/v1/messages"
        ]


@dataclass
class Setup:
    url: str
    backend: RuleBackend
    recorder: Recorder
    home: Path

    def claude(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.home),
            "ANTHROPIC_BASE_URL": self.url,
            "ANTHROPIC_API_KEY": "dummy",
            # No calls anywhere but forge: no telemetry, updates, error reports or extras.
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        return subprocess.run(
            ["claude", "-p", *args],
            env=env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    backend = RuleBackend()
    with serve_on_loopback(backend.app) as backend_url:
        recorder = Recorder(make_app(state_for(backend_url, any_model=True)))
        with serve_on_loopback(recorder) as url:
            yield Setup(url, backend, recorder, tmp_path)


def test_claude_code_gets_an_answer(setup: Setup) -> None:
    run = setup.claude("say hi")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "hi from forge"
    posts = setup.recorder.messages_posts()
    assert posts and all(p["status"] == 200 for p in posts)
    first = posts[0]
    # What this Claude Code sends, and forge must tolerate.
    assert first["query"] == "beta=true"
    headers = first["headers"]
    assert headers["anthropic-version"] == "2023-06-01"
    assert "claude-code-20250219" in headers["anthropic-beta"]
    assert headers["x-api-key"] == "dummy"
    body = first["json"]
    assert body["stream"] is True
    assert body["max_tokens"] >= 1024
    assert len(body["tools"]) >= 10
    assert isinstance(body["system"], list)
    # The backend got an OpenAI request: the system prompt first, the tools translated
    # (deferred ones stay hidden until the conversation loads them).
    sent = setup.backend.requests[0]
    assert sent["messages"][0]["role"] == "system"
    visible = [
        t["name"] for t in body["tools"] if "input_schema" in t and not t.get("defer_loading")
    ]
    assert [t["function"]["name"] for t in sent["tools"]] == visible


def test_claude_code_runs_a_tool_call_from_forge_and_sends_the_result(setup: Setup) -> None:
    run = setup.claude(f"Run the {MARKER} command.", "--allowedTools", "Bash")
    assert run.returncode == 0, run.stderr
    assert f"Tool said: {OUTPUT}" in run.stdout
    posts = setup.recorder.messages_posts()
    answered = posts[-1]["json"]["messages"]
    tool_use = next(
        block
        for message in answered
        if message["role"] == "assistant" and isinstance(message["content"], list)
        for block in message["content"]
        if block["type"] == "tool_use"
    )
    assert tool_use["name"] == "Bash" and tool_use["input"]["command"] == COMMAND
    result = next(
        block
        for block in answered[-1]["content"]
        if isinstance(block, dict) and block["type"] == "tool_result"
    )
    assert result["tool_use_id"] == tool_use["id"]
    assert OUTPUT in json.dumps(result["content"])
    # Translated for the backend: the call's id comes back on the tool message.
    tool_message = [m for m in setup.backend.requests[-1]["messages"] if m["role"] == "tool"][-1]
    assert tool_message["tool_call_id"] == tool_use["id"] and OUTPUT in tool_message["content"]
