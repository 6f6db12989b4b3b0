"""Fixtures shared by every test directory: a real llama-server with the demo model.

Tests that need it are marked ``llama``. When the binary or the model is missing they are
skipped, unless ``FORGE_REQUIRE_LLAMA=1`` (set by ``.ci/run``), when they fail instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("FORGE_REQUIRE_LLAMA") == "1":
        pytest.fail(f"FORGE_REQUIRE_LLAMA=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def demo() -> None:
    """Skip (or fail under FORGE_REQUIRE_LLAMA=1) without llama-server and the demo model."""
    from forge_core.errors import ForgeError

    try:
        from forge_llamafile import launch

        launch.find_server_binary(None)
        launch.demo_model_path()
    except (ImportError, ForgeError) as exc:
        _skip_or_fail(str(exc))


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """Base URL of a llama-server running SmolLM2-135M with the hermes tool template."""
    from forge_core.errors import ForgeError
    from forge_core.managed import ManagedProcess, free_port

    try:
        from forge_llamafile import launch
    except ImportError:
        _skip_or_fail("forge-proxy-llamafile is not installed")
    try:
        binary = launch.find_server_binary(None)
        model = launch.demo_model_path()
    except ForgeError as exc:
        _skip_or_fail(exc.message)
    port = free_port()
    argv = launch.server_argv(
        binary, model, port, template=launch.bundled_template(), num_ctx=8192, extra_flags=""
    )
    argv += ["--alias", "smollm2-135m-instruct", "-np", "4"]
    process = ManagedProcess("llama-server", argv, f"http://127.0.0.1:{port}/health",
                             load_timeout=120, restart=False)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(process.start())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.run_until_complete(process.stop())
        loop.close()
