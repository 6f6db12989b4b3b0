"""Plugin loading, hook documentation, packaging and the command line."""

from __future__ import annotations

import inspect
import tomllib
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from forge_core import cli, hookspecs, plugins
from forge_core.backend import BackendSpec, Capabilities
from forge_core.errors import PluginError
from forge_core.hookspecs import hookimpl
from forge_core.plugins import PluginHost
from forge_core.testing import fake_spec

ROOT = Path(__file__).resolve().parents[2]


def make_plugin(*specs: BackendSpec) -> types.SimpleNamespace:
    @hookimpl
    def forge_register_backends(register):  # type: ignore[no-untyped-def]
        for spec in specs:
            register(spec)

    return types.SimpleNamespace(forge_register_backends=forge_register_backends)


def test_test_plugin_registers_through_the_hook_without_installing() -> None:
    host = PluginHost()
    host.register(make_plugin(fake_spec("alpha", prompt_tools=True)), "alpha-plugin")
    specs = host.backends()
    assert specs["alpha"].capabilities.prompt_tools is True


def test_two_plugins_with_one_backend_name_is_an_error_naming_both() -> None:
    host = PluginHost()
    host.register(make_plugin(fake_spec("dup")), "one", "dist-one 1.0")
    host.register(make_plugin(fake_spec("dup")), "two", "dist-two 2.0")
    with pytest.raises(PluginError, match="dist-one 1.0.*dist-two 2.0"):
        host.backends()


def test_plugin_raising_in_hook_is_reported_by_name() -> None:
    @hookimpl
    def forge_register_backends(register):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    host = PluginHost()
    host.register(types.SimpleNamespace(forge_register_backends=forge_register_backends), "bad")
    with pytest.raises(PluginError, match="plugin 'bad' failed in forge_register_backends"):
        host.backends()


def test_misspelled_hook_is_rejected() -> None:
    @hookimpl
    def forge_register_backend(register):  # type: ignore[no-untyped-def]
        return None

    host = PluginHost()
    with pytest.raises(Exception, match="unknown hook"):
        host.register(types.SimpleNamespace(forge_register_backend=forge_register_backend), "x")


def test_missing_plugin_message_lists_installed_and_pip_command() -> None:
    host = PluginHost()
    with pytest.raises(PluginError) as info:
        host.load(["definitely-not-installed"])
    assert "pip install forge-proxy-definitely-not-installed" in str(info.value)
    assert "installed plugins:" in str(info.value)


def test_builtin_rescue_parsers_are_ordered() -> None:
    parsers = PluginHost().rescue_parsers()
    assert [p.order for p in parsers] == sorted(p.order for p in parsers)
    assert {"hermes", "mistral", "json"} <= {p.name for p in parsers}


def test_every_hook_has_a_docstring_stating_its_contract() -> None:
    hooks = [f for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if n.startswith("forge_")]
    assert len(hooks) >= 3
    for hook in hooks:
        doc = inspect.getdoc(hook) or ""
        assert "Called" in doc and "Returns" in doc, hook.__name__


def test_every_plugin_depends_on_the_core_built_here() -> None:
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert core == "forge-proxy-core"
    plugin_dirs = sorted((ROOT / "plugins").glob("forge-*/pyproject.toml"))
    assert plugin_dirs, "no plugin packages found"
    for path in plugin_dirs:
        project = tomllib.loads(path.read_text())["project"]
        assert project["name"].startswith("forge-proxy-"), path
        deps = project["dependencies"]
        core_deps = [d for d in deps if d.replace("_", "-").startswith("forge")]
        assert core_deps and all(d.startswith(core) for d in core_deps), (path, deps)
        assert not any(d.startswith(("forge-core", "forge_core", "forge-openai")) for d in deps)


# --- command line ---------------------------------------------------------------------------


def test_serve_unknown_plugin_fails_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {k: v for k, v in plugins.installed_plugins().items() if k != "vllm"}
    monkeypatch.setattr(plugins, "installed_plugins", lambda: installed)
    monkeypatch.setattr(cli, "installed_plugins", lambda: installed)
    result = CliRunner().invoke(cli.main, ["serve", "--plugin", "vllm"])
    assert result.exit_code != 0
    assert "pip install forge-proxy-vllm" in result.output
    assert "Traceback" not in result.output


def test_plugins_command_with_no_plugin_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "installed_plugins", lambda: {})
    monkeypatch.setattr(cli, "installed_plugins", lambda: {})
    result = CliRunner().invoke(cli.main, ["plugins"])
    assert result.exit_code == 0
    assert "No backend plugin is installed" in result.output


def test_serve_with_no_plugin_installed_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "installed_plugins", lambda: {})
    monkeypatch.setattr(cli, "installed_plugins", lambda: {})
    result = CliRunner().invoke(cli.main, ["serve"])
    assert result.exit_code != 0 and "no backend plugin is installed" in result.output


BASE_OPTS = {
    "backend_capability": "native", "backend_url": "http://x", "model": None,
    "backend_timeout": 300.0, "serialize": None, "api_key_env": "FORGE_TEST_KEY_UNSET",
    "host": "127.0.0.1", "port": 1, "max_body_bytes": 10, "max_retries": 3,
    "no_rescue": False, "inject_respond_tool": False, "keepalive_interval": 5.0,
    "max_queue": 4, "any_model": False, "stream_start_grace": 20.0,
}


def test_prompt_capability_rejected_for_native_only_backend() -> None:
    spec = fake_spec("nativeonly")
    spec.prompt_alternative = "llamafile"
    with pytest.raises(PluginError, match="native only.*'llamafile' plugin"):
        cli.build_config(spec, {**BASE_OPTS, "backend_capability": "prompt"}, {})


def test_prompt_capability_accepted_where_allowed() -> None:
    spec = BackendSpec(name="p", description="", client_factory=lambda s: None,  # type: ignore
                       capabilities=Capabilities(prompt_tools=True))
    config = cli.build_config(spec, {**BASE_OPTS, "backend_capability": "prompt"}, {})
    assert config.backend.capability == "prompt"


def test_serialize_defaults_on_when_managed_off_when_external() -> None:
    managed = fake_spec("m", managed=True)
    assert cli.build_config(managed, {**BASE_OPTS, "backend_url": None}, {}).max_concurrency == 1
    assert cli.build_config(managed, BASE_OPTS, {}).max_concurrency == 0


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_backend_timeout_must_be_positive(value: str) -> None:
    result = CliRunner().invoke(
        cli.main, ["serve", "--plugin", "llamafile", "--backend-timeout", value]
    )
    assert result.exit_code != 0 and "backend-timeout" in result.output


def test_serve_help_includes_the_plugins_own_options() -> None:
    result = CliRunner().invoke(cli.main, ["serve", "--plugin", "llamafile", "--help"])
    assert result.exit_code == 0
    assert "--server-bin" in result.output and "--backend-capability" in result.output


def test_plugins_command_lists_llamafile_with_capabilities() -> None:
    result = CliRunner().invoke(cli.main, ["plugins"])
    assert result.exit_code == 0
    assert "llamafile" in result.output and "forge-proxy-llamafile" in result.output
    assert "constrained_decoding" in result.output
