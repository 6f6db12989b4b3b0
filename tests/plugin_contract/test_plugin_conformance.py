"""The conformance kit in CI: every in-repo backend plugin passes ``pytest --forge-conformance``,
and the kit fails a plugin that breaks the contract (so passing means something)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGINS = ["llamafile", "vllm", "ollama", "openai", "anthropic"]


def run_kit(name: str, cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path),
                                                           env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--forge-conformance", name],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", PLUGINS)
def test_every_in_repo_plugin_passes_the_kit(name: str, tmp_path: Path) -> None:
    result = run_kit(name, tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


SLOPPY = '''
from forge_core.backend import BackendSpec, Capabilities
from forge_core.hookspecs import hookimpl
from forge_core.openai_client import OpenAIWireClient


class SloppyClient(OpenAIWireClient):
    """Lets httpx's own exceptions escape instead of mapping them to forge errors."""

    def __init__(self, settings):
        super().__init__(settings, name="sloppy", base_url=settings.backend_url)

    def transport_error(self, exc):
        return exc


@hookimpl
def forge_register_backends(register):
    register(BackendSpec(name="sloppy", description="breaks the contract on purpose",
                         client_factory=SloppyClient, capabilities=Capabilities()))
'''


def install_without_pip(root: Path, name: str, module: str, source: str) -> None:
    """A distribution importlib.metadata finds on PYTHONPATH: a module and its dist-info."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"forge_proxy_{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: forge-proxy-{name}\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text(f"[forge.backends]\n{name} = {module}\n")


def test_the_kit_fails_a_plugin_that_breaks_the_contract(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    install_without_pip(site, "sloppy", "forge_sloppy", SLOPPY)
    result = run_kit("sloppy", tmp_path, extra_path=site)
    assert result.returncode == 1, result.stdout[-3000:]
    failed = {line.split("::")[1].split(" ")[0] for line in result.stdout.splitlines()
              if line.startswith("FAILED")}
    assert {"test_an_unreachable_backend_is_backend_unavailable",
            "test_a_backend_that_does_not_answer_in_time_is_a_timeout"} <= failed
    assert "clients must raise forge_core.errors exceptions" in result.stdout
    assert "test_a_streamed_tool_call_arrives_canonical_and_matches_complete" not in failed
