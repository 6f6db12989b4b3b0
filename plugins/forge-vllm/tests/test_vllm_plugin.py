"""The plugin's registration: spec, capabilities, entry point, options."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
from forge_vllm import plugin
from forge_vllm.client import VllmClient
from forge_vllm.identity import derive_identity

from forge_core.backend import BackendSettings
from forge_core.errors import PluginError
from forge_core.plugins import PluginHost

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_distribution_and_entry_point() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert project["name"] == "forge-proxy-vllm"
    assert any(dep.startswith("forge-proxy-core") for dep in project["dependencies"])
    assert project["entry-points"]["forge.backends"] == {"vllm": "forge_vllm.plugin"}


def test_registers_one_native_only_backend() -> None:
    host = PluginHost()
    host.register(plugin, "vllm", "forge-proxy-vllm")
    spec = host.backends()["vllm"]
    caps = spec.capabilities
    assert caps.native_tools and not caps.prompt_tools
    assert caps.constrained_decoding and caps.managed and caps.streaming
    assert spec.prompt_alternative == "llamafile"
    assert spec.derive_identity is derive_identity
    assert spec.client_factory is plugin.make_client
    names = {o.name for o in spec.cli_options}
    assert {"vllm_python", "max_model_len", "load_timeout", "tool_call_parser"} <= names


def test_load_timeout_defaults_to_300_seconds() -> None:
    option = next(o for o in plugin.OPTIONS if o.name == "load_timeout")
    assert option.default == 300.0


def test_prompt_capability_is_refused_pointing_to_llamafile() -> None:
    settings = BackendSettings(
        backend_url="http://127.0.0.1:8000", model=None, timeout=5.0, capability="prompt"
    )
    with pytest.raises(PluginError, match="llamafile"):
        VllmClient(settings)


def test_managed_mode_needs_a_model() -> None:
    settings = BackendSettings(backend_url=None, model=None, timeout=5.0)
    with pytest.raises(PluginError, match="--model"):
        VllmClient(settings)


def test_managed_mode_rejects_a_missing_local_directory(tmp_path: Path) -> None:
    settings = BackendSettings(backend_url=None, model=str(tmp_path / "absent"), timeout=5.0)
    with pytest.raises(PluginError, match="no such model directory"):
        VllmClient(settings)


def test_managed_mode_expands_home_in_the_model_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    settings = BackendSettings(
        backend_url=None,
        model="~/models/tiny",
        timeout=5.0,
        options={"vllm_python": sys.executable},
    )
    client = VllmClient(settings)
    assert client.process is not None
    argv = client.process.argv
    assert argv[argv.index("--model") + 1] == str(tmp_path / "models" / "tiny")
    assert [m.key for m in client.models()] == ["tiny"]
