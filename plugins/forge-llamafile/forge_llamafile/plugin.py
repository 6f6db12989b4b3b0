"""Registers the ``llamafile`` backend with forge."""

from __future__ import annotations

import click

from forge_core.backend import BackendSettings, BackendSpec, Capabilities
from forge_core.budget import BUDGET_MODES
from forge_core.hookspecs import hookimpl
from forge_llamafile.client import LlamafileClient
from forge_llamafile.constrain import CONSTRAIN_WITH

OPTIONS = [
    click.Option(["--server-bin"], help="llama-server or llamafile binary (managed mode)."),
    click.Option(
        ["--chat-template-file"],
        help="Jinja chat template for llama-server (default for --model demo: a hermes-style "
        "template that renders tools).",
    ),
    click.Option(
        ["--num-ctx", "num_ctx"], type=click.IntRange(min=256),
        help="Context size (-c) to launch with; implies --budget-mode manual. The server may "
        "round it: the size in force is read back from /props.",
    ),
    click.Option(
        ["--load-timeout"], type=float, default=180.0, show_default=True,
        help="Seconds to wait for a managed server to become healthy.",
    ),
    click.Option(["--extra-flags"], default="", help="Extra llama-server flags (one string)."),
    click.Option(
        ["--constrain-with"], type=click.Choice(CONSTRAIN_WITH), default="grammar",
        show_default=True,
        help="How a constrained retry is constrained: a compact grammar (tools described in "
        "the system message), the same grammar refusing placeholder values such as a tool "
        "name (grammar-avoid), the JSON schema without tools, or the JSON schema with tools.",
    ),
]


def make_client(settings: BackendSettings) -> LlamafileClient:
    return LlamafileClient(settings)


@hookimpl
def forge_register_backends(register) -> None:  # type: ignore[no-untyped-def]
    register(
        BackendSpec(
            name="llamafile",
            description="llama.cpp llama-server / llamafile (OpenAI wire; managed or external)",
            client_factory=make_client,
            capabilities=Capabilities(
                native_tools=True,
                prompt_tools=True,
                streaming=True,
                constrained_decoding=True,
                usage_reporting=True,
                managed=True,
            ),
            cli_options=OPTIONS,
            budget_modes=BUDGET_MODES,
        )
    )
