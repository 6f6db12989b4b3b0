"""forge's entry point for the Ollama backend (``forge.backends`` group, name ``ollama``).

Registration only describes the backend: no network I/O happens here. Installed models are
discovered later, in :meth:`OllamaClient.start`.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from forge_core.backend import BackendSpec, Capabilities
from forge_core.hookspecs import hookimpl
from forge_ollama.client import DEFAULT_URL, OllamaClient, ollama_identity

CAPABILITIES = Capabilities(
    native_tools=True,
    prompt_tools=False,
    streaming=True,
    constrained_decoding=True,
    usage_reporting=True,
    managed=False,
)
"""Native tools only: Ollama renders tools with the model's own template; for a model without
tool support use the llamafile plugin with prompt tools."""


def cli_options() -> list[click.Option]:
    """The ``forge serve`` options this backend adds (values land in ``settings.options``)."""
    return [
        click.Option(
            ["--num-ctx", "num_ctx"],
            type=click.IntRange(min=1),
            default=None,
            help=(
                "Ollama context size, sent as options.num_ctx on every request. Without it "
                "Ollama uses its own default (often 2048-4096 tokens) and silently truncates "
                "longer prompts."
            ),
        ),
        click.Option(
            ["--unload-on-exit/--keep-loaded", "unload_on_exit"],
            default=None,
            help=(
                "Unload the model from Ollama when forge stops. Default: on when forge manages "
                "the model (--model without --backend-url), off otherwise."
            ),
        ),
    ]


def backend_spec() -> BackendSpec:
    """The registration record for the ``ollama`` backend."""
    return BackendSpec(
        name="ollama",
        description=(
            "Ollama via its native /api/chat: tool arguments as JSON objects, canonical "
            "streamed tool calls, per-request num_ctx"
        ),
        client_factory=OllamaClient,
        capabilities=CAPABILITIES,
        derive_identity=ollama_identity,
        cli_options=cli_options(),
        default_url=DEFAULT_URL,
        prompt_alternative="llamafile",
    )


@hookimpl
def forge_register_backends(register: Callable[[BackendSpec], None]) -> None:
    """Register the ``ollama`` backend."""
    register(backend_spec())
