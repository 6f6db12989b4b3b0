"""Every plugin loaded: ``forge.plugins`` distributions (parsers, transforms, no backend) are
loaded by every ``forge serve`` unless disabled, listed by ``forge plugins`` with their hooks
and order, and hooks are called through pluggy so their arguments stay extensible."""

from __future__ import annotations

import json
import sys
import textwrap
import types
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from forge_core import __version__, cli, hookspecs, plugins
from forge_core.errors import PluginError
from forge_core.hookspecs import hookimpl
from forge_core.plugins import InstalledPlugin, PluginHost
from forge_core.testing import fake_spec

PARSER_PLUGIN = '''
from forge_core.guardrails.records import RescueParser, RescuedCall
from forge_core.hookspecs import hookimpl

def parse(text, tool_names):
    return []

@hookimpl
def forge_register_rescue_parsers(register):
    register(RescueParser(name="ext-parser", parse=parse, markers=("<ext>",), order=60))
'''

TRANSFORM_PLUGIN = '''
from forge_core.hookspecs import hookimpl
from forge_core.transforms import RequestTransform

SEEN = []

@hookimpl
def forge_register_request_transforms(register, forge_version):
    SEEN.append(forge_version)
    register(RequestTransform(name="ext-transform", apply=lambda body, req: None, order=7))
'''

BROKEN_IMPORT = "raise ImportError('this plugin is broken on purpose')\n"

BROKEN_HOOK = '''
from forge_core.hookspecs import hookimpl

@hookimpl
def forge_register_rescue_parsers(register):
    raise RuntimeError("broken hook")
'''


@pytest.fixture
def extensions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, InstalledPlugin]:
    """Four installed forge.plugins entry points backed by modules written to tmp_path."""
    sources = {
        "extparser": PARSER_PLUGIN, "exttransform": TRANSFORM_PLUGIN,
        "extbroken": BROKEN_IMPORT, "extbadhook": BROKEN_HOOK,
    }
    found: dict[str, InstalledPlugin] = {}
    for name, source in sources.items():
        module = f"forge_test_{name}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(module, None)
        ep = EntryPoint(name=name, value=module, group=hookspecs.PLUGIN_GROUP)
        found[name] = InstalledPlugin(name, f"forge-proxy-{name}", "1.0", ep,
                                      hookspecs.PLUGIN_GROUP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "installed_extensions", lambda: found)
    return found


def test_extensions_load_and_failures_are_reported_not_fatal(
    extensions: dict[str, InstalledPlugin],
) -> None:
    host = PluginHost()
    host.load_extensions()
    names = [p.name for p in host.rescue_parsers()]
    assert "ext-parser" in names and "hermes" in names
    assert [t.name for t in host.transforms() if t.name.startswith("ext")] == ["ext-transform"]
    assert "ImportError: this plugin is broken on purpose" in host.failures["extbroken"]
    assert "broken hook" in host.failures["extbadhook"]
    assert host.owner_of("forge_register_rescue_parsers", "ext-parser") == "extparser"


def test_a_disabled_extension_is_not_imported(extensions: dict[str, InstalledPlugin]) -> None:
    host = PluginHost()
    host.load_extensions(disabled={"extparser", "extbroken"})
    assert "ext-parser" not in [p.name for p in host.rescue_parsers()]
    assert "forge_test_extparser" not in sys.modules
    assert host.disabled == ["extbroken", "extparser"]
    assert "extbroken" not in host.failures


def test_disabling_an_unknown_plugin_is_an_error_listing_the_installed_ones(
    extensions: dict[str, InstalledPlugin],
) -> None:
    with pytest.raises(PluginError, match="--disable-plugin nope.*extparser"):
        PluginHost().load_extensions(disabled={"nope"})


def test_hooks_go_through_pluggy_so_an_implementation_declares_only_what_it_uses(
    extensions: dict[str, InstalledPlugin],
) -> None:
    host = PluginHost()
    host.load_extensions()
    host.transforms()
    # The transform plugin asked for forge_version, the parser plugin did not: both work.
    seen = sys.modules["forge_test_exttransform"].SEEN
    assert seen == [__version__]
    assert "ext-parser" in [p.name for p in host.rescue_parsers()]


def test_a_record_of_the_wrong_type_is_rejected_naming_the_plugin() -> None:
    @hookimpl
    def forge_register_backends(register):  # type: ignore[no-untyped-def]
        register({"name": "not a spec"})

    host = PluginHost()
    host.register(types.SimpleNamespace(forge_register_backends=forge_register_backends), "odd")
    with pytest.raises(PluginError, match="plugin 'odd'.*registered dict, expected BackendSpec"):
        host.backends()


def test_records_are_attributed_to_their_plugin_even_with_several_per_hook() -> None:
    def backend_plugin(*names: str) -> types.SimpleNamespace:
        @hookimpl
        def forge_register_backends(register):  # type: ignore[no-untyped-def]
            for name in names:
                register(fake_spec(name))

        return types.SimpleNamespace(forge_register_backends=forge_register_backends)

    host = PluginHost()
    host.register(backend_plugin("a1", "a2"), "alpha", "forge-proxy-alpha 1")
    host.register(backend_plugin("b1"), "beta", "forge-proxy-beta 2")
    table = {row["name"]: row for row in plugins.hook_table(host)}
    assert [r["name"] for r in table["alpha"]["registered"]] == ["a1", "a2"]
    assert [r["name"] for r in table["beta"]["registered"]] == ["b1"]
    assert table["beta"]["hooks"] == ["forge_register_backends"]


def test_a_parser_name_registered_twice_keeps_the_first(caplog: pytest.LogCaptureFixture) -> None:
    from forge_core.guardrails.records import RescueParser

    @hookimpl
    def forge_register_rescue_parsers(register):  # type: ignore[no-untyped-def]
        register(RescueParser("hermes", lambda text, names: [], order=1))

    host = PluginHost()
    host.register(types.SimpleNamespace(
        forge_register_rescue_parsers=forge_register_rescue_parsers), "copycat",
        kind="extension")
    hermes = [p for p in host.rescue_parsers() if p.name == "hermes"]
    assert len(hermes) == 1 and hermes[0].order == 20
    assert "copycat" in caplog.text


# --- the command line ---------------------------------------------------------------------------


def test_forge_plugins_lists_every_plugin_with_hooks_order_and_failures(
    extensions: dict[str, InstalledPlugin],
) -> None:
    result = CliRunner().invoke(cli.main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    table = {row["name"]: row for row in json.loads(result.output)["hooks"]}
    assert table["extparser"]["kind"] == "extension"
    assert table["extparser"]["hooks"] == ["forge_register_rescue_parsers"]
    assert table["extparser"]["registered"] == [
        {"hook": "forge_register_rescue_parsers", "name": "ext-parser", "order": 60}]
    assert table["extbroken"]["status"] == "failed"
    assert table["extbadhook"]["status"] == "failed"
    assert table["builtin"]["kind"] == "builtin"

    text = CliRunner().invoke(cli.main, ["plugins", "--disable-plugin", "extparser"]).output
    assert "forge_register_request_transforms: ext-transform (7)" in text
    assert "extparser" in text and "DISABLED" in text
    assert "FAILED: ImportError: this plugin is broken on purpose" in text


def test_forge_serve_loads_every_extension_unless_disabled(
    extensions: dict[str, InstalledPlugin], monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Any] = []
    monkeypatch.setattr(cli, "run", lambda state, drain_timeout: started.append(state))
    args = ["serve", "--plugin", "openai", "--backend-url", "http://127.0.0.1:9"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert "ext-parser" in [p.name for p in started[0].engine.parsers]

    result = CliRunner().invoke(cli.main, [*args, "--disable-plugin", "extparser"])
    assert result.exit_code == 0, result.output
    assert "ext-parser" not in [p.name for p in started[1].engine.parsers]

    result = CliRunner().invoke(cli.main, [*args, "--disable-plugin", "typo"])
    assert result.exit_code != 0 and "--disable-plugin typo" in result.output
    assert "Traceback" not in result.output


def test_a_client_factory_bug_is_a_clear_start_up_error(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = fake_spec("buggy")

    def factory(settings: Any) -> Any:
        raise KeyError("sk-secret")

    spec.client_factory = factory
    monkeypatch.setattr(cli, "run", lambda state, drain_timeout: None)
    host = PluginHost()
    host.register(types.SimpleNamespace(forge_register_backends=hookimpl(
        lambda register: register(spec))), "buggy")

    class Host(PluginHost):
        def __new__(cls) -> PluginHost:  # type: ignore[misc]
            return host

    monkeypatch.setattr(cli, "PluginHost", Host)
    monkeypatch.setattr(host, "load", lambda names=None, strict=False: None)
    result = CliRunner().invoke(cli.main, ["serve", "--plugin", "buggy", "--backend-url", "x"])
    assert result.exit_code != 0
    assert "Backend 'buggy' failed in its plugin code (KeyError)" in result.output
    assert "sk-secret" not in result.output and "Traceback" not in result.output
