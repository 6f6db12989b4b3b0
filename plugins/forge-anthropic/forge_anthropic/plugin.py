"""The forge-anthropic plugin: registers the ``anthropic`` backend."""

from __future__ import annotations

from collections.abc import Callable

import click

from forge_anthropic.client import (
    ANTHROPIC_VERSION,
    DEFAULT_KEY_ENV,
    DEFAULT_MAX_TOKENS,
    DEFAULT_URL,
    AnthropicClient,
)
from forge_core.backend import BackendSpec, Capabilities
from forge_core.hookspecs import hookimpl

CAPABILITIES = Capabilities(
    native_tools=True,
    prompt_tools=False,
    streaming=True,
    constrained_decoding=False,
    usage_reporting=True,
)

CLI_OPTIONS = [
    click.Option(
        ["--anthropic-api-key-env"],
        default=DEFAULT_KEY_ENV,
        show_default=True,
        metavar="NAME",
        help="Environment variable holding the Anthropic API key (sent as x-api-key). "
        "The key itself is never taken on the command line.",
    ),
    click.Option(
        ["--anthropic-version"],
        default=ANTHROPIC_VERSION,
        show_default=True,
        help="The anthropic-version header sent to the backend.",
    ),
    click.Option(
        ["--anthropic-max-tokens"],
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_TOKENS,
        show_default=True,
        help="max_tokens sent when an OpenAI client gives none (Anthropic requires it).",
    ),
]


@hookimpl
def forge_register_backends(register: Callable[[BackendSpec], None]) -> None:
    """Register the ``anthropic`` backend (describes only: no I/O)."""
    register(
        BackendSpec(
            name="anthropic",
            description="The Anthropic Messages API, or a server that speaks it",
            client_factory=AnthropicClient,
            capabilities=CAPABILITIES,
            cli_options=CLI_OPTIONS,
            default_url=DEFAULT_URL,
            prompt_alternative="llamafile",
        )
    )
