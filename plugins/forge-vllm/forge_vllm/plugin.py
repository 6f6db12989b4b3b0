"""Registers the ``vllm`` backend with forge."""

from __future__ import annotations

from collections.abc import Callable

import click

from forge_core.backend import BackendSettings, BackendSpec, Capabilities
from forge_core.hookspecs import hookimpl
from forge_vllm.client import DEFAULT_LOAD_TIMEOUT, VllmClient
from forge_vllm.identity import derive_identity

CAPABILITIES = Capabilities(
    native_tools=True,
    prompt_tools=False,  # vLLM parses tool calls itself; prompt tools belong to llamafile
    streaming=True,
    constrained_decoding=True,  # named / "required" tool_choice
    usage_reporting=True,
    managed=True,
)

OPTIONS = [
    click.Option(
        ["--vllm-python"],
        envvar="FORGE_VLLM_PYTHON",
        help="Python interpreter that has vLLM installed (managed mode; default: this one if "
        "it has vLLM, else the interpreter of 'vllm' on PATH).",
    ),
    click.Option(
        ["--max-model-len"], type=click.IntRange(min=128),
        help="Context length to launch vLLM with (default: the model's own).",
    ),
    click.Option(
        ["--load-timeout"], type=float, default=DEFAULT_LOAD_TIMEOUT, show_default=True,
        help="Seconds to wait for a managed vLLM to answer /v1/models.",
    ),
    click.Option(
        ["--tool-call-parser"], default="hermes", show_default=True,
        help="vLLM tool parser for the managed server ('none' launches without tool flags).",
    ),
    click.Option(
        ["--chat-template"],
        help="Chat template for the managed server: a Jinja file, or 'hermes-smollm2' (bundled).",
    ),
    click.Option(["--served-model-name"], help="Name vLLM serves the model as (managed mode)."),
    click.Option(["--vllm-port"], type=int, help="Port of the managed vLLM (default: a free one)."),
    click.Option(["--extra-flags"], default="", help="Extra vLLM flags (one string)."),
]


def make_client(settings: BackendSettings) -> VllmClient:
    """The client factory forge calls once per process."""
    return VllmClient(settings)


@hookimpl
def forge_register_backends(register: Callable[[BackendSpec], None]) -> None:
    """Register the ``vllm`` backend."""
    register(
        BackendSpec(
            name="vllm",
            description="vLLM OpenAI-compatible server (native tools; managed or external)",
            client_factory=make_client,
            capabilities=CAPABILITIES,
            derive_identity=derive_identity,
            cli_options=OPTIONS,
            default_url=None,
            prompt_alternative="llamafile",
        )
    )
