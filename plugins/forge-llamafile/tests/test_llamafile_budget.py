"""Budget modes in the llamafile plugin: what ``-c`` a managed llama-server gets, what is read
back, and the modes refused for a server forge does not launch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from forge_llamafile import launch
from forge_llamafile.client import LlamafileClient

from forge_core import budget
from forge_core.backend import BackendSettings
from forge_core.errors import ForgeError, PluginError


@pytest.fixture
def demo_model() -> Path:
    try:
        return launch.demo_model_path()
    except PluginError as exc:
        pytest.skip(exc.message)


def managed(model: Path, mode: str, **options: object) -> LlamafileClient:
    """A managed client (not started): ``--server-bin`` is any existing file."""
    settings = BackendSettings(
        backend_url=None, model=str(model), timeout=60.0, budget_mode=mode,
        options={"server_bin": "/bin/true", **options},
    )
    return LlamafileClient(settings)


def launch_ctx(client: LlamafileClient) -> str | None:
    assert client.process is not None
    argv = client.process.argv
    return argv[argv.index("-c") + 1] if "-c" in argv else None


def test_backend_mode_leaves_the_context_to_the_server(demo_model: Path) -> None:
    assert launch_ctx(managed(demo_model, "backend")) is None


def test_manual_mode_launches_with_num_ctx(demo_model: Path) -> None:
    client = managed(demo_model, "manual", num_ctx=3000)
    assert launch_ctx(client) == "3000"
    assert client.requested_ctx == 3000


@pytest.mark.parametrize("mode", ["forge-full", "forge-fast"])
def test_forge_modes_launch_with_the_rule_s_number(demo_model: Path, mode: str) -> None:
    client = managed(demo_model, mode)
    expected = budget.plan_context(mode, demo_model)  # type: ignore[arg-type]
    assert launch_ctx(client) == str(expected.tokens)
    assert client.budget_note.startswith(mode)
    # The demo model's native context is 8192; with the memory of any test machine:
    assert expected.full == 8192
    assert expected.tokens == (8192 if mode == "forge-full" else 4096)


@pytest.mark.parametrize("mode", ["manual", "forge-full", "forge-fast"])
def test_external_server_cannot_be_resized(mode: str) -> None:
    settings = BackendSettings(
        backend_url="http://127.0.0.1:9", model=None, timeout=60.0, budget_mode=mode,
        options={"num_ctx": 4096},
    )
    with pytest.raises(PluginError, match=f"--budget-mode {mode} needs managed mode"):
        LlamafileClient(settings)


@pytest.mark.llama
async def test_forge_full_is_read_back_from_the_running_server(demo_model: Path) -> None:
    try:
        binary = launch.find_server_binary(None)
    except ForgeError as exc:
        if os.environ.get("FORGE_REQUIRE_LLAMA") == "1":
            pytest.fail(exc.message)
        pytest.skip(exc.message)
    settings = BackendSettings(
        backend_url=None, model="demo", timeout=60.0, budget_mode="forge-full",
        options={"server_bin": binary},
    )
    client = LlamafileClient(settings)
    await client.start()
    try:
        status = await client.status()
        assert status.context_size == 8192 == client.requested_ctx
        assert status.extra["n_ctx_train"] == 8192  # the model's native maximum
        assert status.extra["budget_mode"] == "forge-full"
        assert "forge-full = min(native, fits) = 8192" in status.extra["budget_rule"]
    finally:
        await client.aclose()
    assert client.process is not None and client.process.pid is not None
    from forge_core.managed import pid_alive

    assert not pid_alive(client.process.pid)
