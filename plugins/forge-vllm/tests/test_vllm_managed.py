"""Managed mode with a stand-in vLLM process (fake_vllm_server.py): launch, wait, probe, stop."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from forge_vllm.client import VllmClient
from forge_vllm.launch import SERVER_MODULE

from forge_core.backend import BackendSettings
from forge_core.errors import BackendUnavailable

FAKE_SERVER = Path(__file__).with_name("fake_vllm_server.py")


@pytest.fixture
def fake_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable that stands in for a vLLM venv's python."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SERVER}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(tmp_path / "record.json"))
    return wrapper


def managed_client(python: Path, model_dir: Path, **options: Any) -> VllmClient:
    opts = {"vllm_python": str(python), "load_timeout": 60.0, **options}
    settings = BackendSettings(backend_url=None, model=str(model_dir), timeout=10.0, options=opts)
    return VllmClient(settings)


def _state(pid: int) -> str | None:
    """The process state letter from /proc, None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return None


async def _wait_gone(pid: int) -> bool:
    for _ in range(200):  # bounded: a stopped process group disappears well within this
        if _state(pid) in (None, "Z"):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_launches_waits_adopts_name_probes_and_stops_the_group(
    fake_python: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "Qwen3-8B-AWQ"
    model_dir.mkdir()
    client = managed_client(
        fake_python, model_dir, max_model_len=1024, chat_template="hermes-smollm2"
    )
    await client.start()
    try:
        record = json.loads((tmp_path / "record.json").read_text())
        argv = record["argv"]
        assert argv[:2] == ["-m", SERVER_MODULE]
        assert argv[argv.index("--model") + 1] == str(model_dir)
        assert argv[argv.index("--port") + 1] == client.base_url.rsplit(":", 1)[1]
        assert argv[argv.index("--max-model-len") + 1] == "1024"
        assert "--enable-auto-tool-choice" in argv
        assert argv[argv.index("--tool-call-parser") + 1] == "hermes"
        assert argv[argv.index("--chat-template") + 1].endswith("hermes-smollm2.jinja")

        identity = client.models()[0]
        assert (identity.wire_name, identity.key) == (str(model_dir), "Qwen3-8B-AWQ")
        status = await client.status()
        assert status.ready and status.context_size == 1024
        assert status.extra["tool_calling"] is True
        assert status.extra["managed_pid"] == record["pid"]
    finally:
        await client.aclose()
    assert await _wait_gone(record["pid"])
    assert await _wait_gone(record["child_pid"])  # the whole process group was stopped


async def test_without_tool_parser_the_launch_lacks_flags_and_status_says_so(
    fake_python: Path, tmp_path: Path
) -> None:
    client = managed_client(
        fake_python, tmp_path, tool_call_parser="none", served_model_name="tiny"
    )
    await client.start()
    try:
        argv = json.loads((tmp_path / "record.json").read_text())["argv"]
        assert "--enable-auto-tool-choice" not in argv
        assert [m.wire_name for m in client.models()] == ["tiny"]
        status = await client.status()
        assert status.ready is False
        assert status.extra["missing_flags"] == ["--enable-auto-tool-choice", "--tool-call-parser"]
    finally:
        await client.aclose()


async def test_a_failed_launch_reports_vllm_own_error(
    fake_python: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = "TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser"
    monkeypatch.setenv("FAKE_VLLM_FAIL", message)
    client = managed_client(fake_python, tmp_path)
    with pytest.raises(BackendUnavailable) as info:
        await client.start()
    await client.aclose()
    assert "exited during start-up" in info.value.message
    assert message in info.value.message
