"""Registration: the hook, the spec, the CLI options and the entry point."""

from __future__ import annotations

import tomllib
from pathlib import Path

import click
import pluggy
from click.testing import CliRunner
from forge_ollama import plugin
from forge_ollama.client import OllamaClient

from forge_core import __version__, hookspecs
from forge_core.backend import BackendSettings, BackendSpec

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def registered_specs() -> list[BackendSpec]:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(plugin, name="ollama")
    manager.check_pending()
    specs: list[BackendSpec] = []
    manager.hook.forge_register_backends(
        register=specs.append, forge_version=__version__
    )
    return specs


def test_hook_registers_one_ollama_backend() -> None:
    (spec,) = registered_specs()
    assert spec.name == "ollama"
    assert spec.default_url == "http://127.0.0.1:11434"
    assert spec.prompt_alternative == "llamafile"
    caps = spec.capabilities
    assert (caps.native_tools, caps.prompt_tools, caps.streaming) == (True, False, True)
    assert (caps.constrained_decoding, caps.usage_reporting, caps.managed) == (True, True, False)
    assert spec.derive_identity("llama3.1:latest").names == ("llama3.1:latest", "llama3.1")
    assert [o.name for o in spec.cli_options] == ["num_ctx", "unload_on_exit"]


def test_client_factory_builds_an_ollama_client() -> None:
    (spec,) = registered_specs()
    settings = BackendSettings(backend_url="http://127.0.0.1:11434", model=None, timeout=5.0)
    client = spec.client_factory(settings)
    assert isinstance(client, OllamaClient)
    assert client.base_url == "http://127.0.0.1:11434"


def test_cli_options_parse_into_settings_values() -> None:
    seen: dict[str, object] = {}

    @click.command(params=plugin.cli_options())
    def serve(**options: object) -> None:
        seen.update(options)

    runner = CliRunner()
    assert runner.invoke(serve, []).exit_code == 0
    assert seen == {"num_ctx": None, "unload_on_exit": None}
    assert runner.invoke(serve, ["--num-ctx", "32768", "--keep-loaded"]).exit_code == 0
    assert seen == {"num_ctx": 32768, "unload_on_exit": False}
    assert runner.invoke(serve, ["--num-ctx", "0"]).exit_code != 0


def test_entry_point_and_distribution_metadata() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert project["name"] == "forge-proxy-ollama"
    assert project["entry-points"]["forge.backends"] == {"ollama": "forge_ollama.plugin"}
    assert any(dep.startswith("forge-proxy-core") for dep in project["dependencies"])
