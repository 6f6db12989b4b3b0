"""The built-in rescue parsers, registered through the same hook as any plugin's."""

from __future__ import annotations

from collections.abc import Callable

from forge_core.guardrails.records import RescueParser
from forge_core.guardrails.rescue import BUILTIN_PARSERS
from forge_core.hookspecs import hookimpl


@hookimpl
def forge_register_rescue_parsers(register: Callable[[RescueParser], None]) -> None:
    """Register fenced JSON, Hermes, Mistral, Llama 3, Qwen-XML and bare-JSON parsers."""
    for parser in BUILTIN_PARSERS:
        register(parser)
