"""forge's built-in hook implementations, registered through the same hooks as any plugin's:
the rescue parsers here, the request transforms from :mod:`forge_core.builtin_transforms`."""

from __future__ import annotations

from collections.abc import Callable

from forge_core.builtin_transforms import forge_register_request_transforms
from forge_core.guardrails.records import RescueParser
from forge_core.guardrails.rescue import BUILTIN_PARSERS
from forge_core.hookspecs import hookimpl


@hookimpl
def forge_register_rescue_parsers(register: Callable[[RescueParser], None]) -> None:
    """Register fenced JSON, Hermes, Mistral, Llama 3, Qwen-XML and bare-JSON parsers."""
    for parser in BUILTIN_PARSERS:
        register(parser)


__all__ = ["forge_register_request_transforms", "forge_register_rescue_parsers"]
