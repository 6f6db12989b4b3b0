"""``forge serve --config forge.toml``: every option (plugin ones too), flags over FORGE_*
variables over the file over defaults, and bad keys or values refused at start by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from forge_core import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "forge.example.toml"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The state ``forge serve`` would run, instead of running it."""
    states: list[Any] = []
    monkeypatch.setattr(cli, "run", lambda state, drain_timeout: states.append(
        (state, drain_timeout)))
    for name in ("FORGE_PORT", "FORGE_MAX_RETRIES", "FORGE_CONFIG", "FORGE_PLUGIN"):
        monkeypatch.delenv(name, raising=False)
    return states


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "forge.toml"
    path.write_text(text)
    return str(path)


def serve(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli.main, ["serve", *args], env=env)


def test_file_sets_core_and_plugin_options(tmp_path: Path, served: list[Any]) -> None:
    path = write(tmp_path, """
        plugin = "llamafile"
        backend_url = "http://127.0.0.1:9"
        port = 9191
        max_retries = 5
        no_rescue = true
        serialize = true
        inspect = 7
        metrics_public = true
        drain_timeout = 3.5
        drain_delay = 2
        chat_template_file = "/tmp/template.jinja"
    """)
    result = serve("--config", path)
    assert result.exit_code == 0, result.output
    [(state, drain_timeout)] = served
    config = state.config
    assert config.plugin == "llamafile" and config.port == 9191
    assert config.backend.backend_url == "http://127.0.0.1:9"
    assert config.guardrails.max_retries == 5 and config.guardrails.rescue is False
    assert config.max_concurrency == 1 and config.inspect == 7 and config.metrics_public
    assert config.drain_delay == 2.0 and drain_timeout == 3.5
    assert config.backend.options["chat_template_file"] == "/tmp/template.jinja"


def test_flags_override_env_which_overrides_the_file(tmp_path: Path, served: list[Any]) -> None:
    path = write(tmp_path, 'plugin = "llamafile"\nbackend_url = "http://127.0.0.1:9"\n'
                 "port = 9001\nmax_retries = 1\nkeepalive_interval = 2.0\n")
    env = {"FORGE_PORT": "9002", "FORGE_MAX_RETRIES": "4"}
    assert serve("--config", path, "--port", "9003", env=env).exit_code == 0
    assert serve("--config", path, env=env).exit_code == 0
    assert serve("--config", path).exit_code == 0
    flag, from_env, from_file = (s.config for s, _ in served)
    assert (flag.port, flag.guardrails.max_retries) == (9003, 4)
    assert (from_env.port, from_env.guardrails.max_retries) == (9002, 4)
    assert (from_file.port, from_file.guardrails.max_retries) == (9001, 1)
    assert from_file.guardrails.keepalive_interval == 2.0  # file beats the default
    assert serve("--config", path, "--keepalive-interval", "7").exit_code == 0
    assert served[-1][0].config.guardrails.keepalive_interval == 7.0


def test_config_path_from_the_environment(tmp_path: Path, served: list[Any]) -> None:
    path = write(tmp_path, 'plugin = "llamafile"\nbackend_url = "http://127.0.0.1:9"\n'
                 "port = 9444\n")
    assert serve(env={"FORGE_CONFIG": path}).exit_code == 0
    assert served[0][0].config.port == 9444


def test_serve_table_is_accepted(tmp_path: Path, served: list[Any]) -> None:
    path = write(tmp_path, '[serve]\nplugin = "llamafile"\nbackend_url = "http://h:1"\n')
    assert serve("--config", path).exit_code == 0
    assert served[0][0].config.backend.backend_url == "http://h:1"


@pytest.mark.parametrize(("text", "message"), [
    ("max_retry = 3", "unknown key 'max_retry' (did you mean 'max_retries'?)"),
    ("port = \"eighty\"", "key 'port':"),
    ("max_retries = 99", "key 'max_retries':"),
    ("keepalive_interval = -1", "key 'keepalive_interval': must be a finite number > 0"),
    ("backend_capability = \"psychic\"", "key 'backend_capability':"),
    ("num_ctx = \"lots\"", "key 'num_ctx':"),
    ("port = [1, 2", "is not valid TOML"),
    ("[limits]\nport = 1", "unknown key 'limits'"),
])
def test_bad_keys_and_values_are_refused_naming_the_key(
    tmp_path: Path, served: list[Any], text: str, message: str
) -> None:
    path = write(tmp_path, 'plugin = "llamafile"\nbackend_url = "http://127.0.0.1:9"\n' + text)
    result = serve("--config", path)
    assert result.exit_code == 2 and served == []
    assert message in result.output and "Traceback" not in result.output


def test_missing_file_is_a_clear_error(tmp_path: Path, served: list[Any]) -> None:
    result = serve("--config", str(tmp_path / "nope.toml"), "--plugin", "llamafile")
    assert result.exit_code == 2 and "cannot read config file" in result.output


def test_the_documented_example_file_is_valid(served: list[Any]) -> None:
    result = serve("--config", str(EXAMPLE), "--backend-url", "http://127.0.0.1:9")
    assert result.exit_code == 0, result.output
    [(state, _)] = served
    assert state.config.plugin == "llamafile" and state.config.inspect > 0
