"""The conformance kit: one suite every backend plugin runs against its own client.

Run it with pytest (the kit is a pytest plugin, registered through the ``pytest11`` entry
point of forge-proxy-core)::

    pytest --forge-conformance mybackend

The suite builds the installed plugin's client with its own ``client_factory`` and points it
at a fake server that speaks the plugin's wire, then checks the contract forge relies on:
error mapping (unreachable, timeout, HTTP errors, broken envelopes), canonical streamed tool
calls, cancellation when the consumer goes away, readiness with a reason, the identity rule,
and a constrained retry when ``constrained_decoding`` is declared.

The fake comes from a :class:`Harness`. A plugin whose client speaks the OpenAI wire needs
none (the default, :class:`OpenAIWireHarness`, serves a :class:`~forge_core.testing.
ScriptedBackend`); any other plugin exposes one in the ``forge.conformance`` entry-point group
under its backend name, for example ``mybackend = "forge_mybackend.conformance:harness"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import click

from forge_core.backend import BackendClient, BackendSettings, BackendSpec
from forge_core.errors import PluginError
from forge_core.testing import ScriptedBackend

ENTRY_POINT_GROUP = "forge.conformance"
SERVED_MODEL = "conformance-model"


@dataclass
class Harness:
    """How the suite fakes one plugin's backend. Subclass it for a wire other than OpenAI's.

    ``fake(models)`` returns a :class:`~forge_core.testing.ScriptedBackend` (or a subclass
    speaking another wire): the suite pushes OpenAI-shaped ``Reply`` objects and reads
    ``requests``, ``cancelled`` and ``in_flight``.
    """

    options: Mapping[str, Any] = field(default_factory=dict)
    """Values for the plugin's own CLI options (by parameter name), over their defaults."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment the client factory reads (an API key variable, say), set while it runs."""
    model: str | None = None
    """``--model`` to configure (None: let the client discover the served model)."""
    secret: str | None = None
    """A credential the client sends: it must never appear in an error message."""
    broken_bodies: tuple[bytes, ...] = (b"this is not json", b"[1, 2, 3]")
    """Non-streamed 200 answers that break the envelope (BackendProtocolError expected)."""
    broken_streams: tuple[bytes, ...] = (b"data: {this is not json\n\n",)
    """Streamed 200 answers that break the envelope (BackendProtocolError expected)."""

    def fake(self, models: list[str]) -> ScriptedBackend:
        return ScriptedBackend(models)


class OpenAIWireHarness(Harness):
    """The default: the plugin's client speaks OpenAI chat completions."""


def harness_for(name: str, client: BackendClient | None = None) -> Harness:
    """The harness a plugin declares in ``forge.conformance``, else the OpenAI-wire default
    when its client is an OpenAI-wire client; a PluginError saying what to add otherwise."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            declared = ep.load()
            harness = declared() if callable(declared) else declared
            if not isinstance(harness, Harness):
                raise PluginError(
                    f"{ENTRY_POINT_GROUP} entry point '{name}' gave {type(harness).__name__}, "
                    "not a forge_core.conformance.Harness"
                )
            return harness
    from forge_core.openai_client import OpenAIWireClient

    if client is None or isinstance(client, OpenAIWireClient):
        return OpenAIWireHarness()
    raise PluginError(
        f"backend '{name}' does not speak the OpenAI wire and declares no conformance harness: "
        f"add one to the '{ENTRY_POINT_GROUP}' entry-point group (docs/writing-a-plugin.md)"
    )


def option_defaults(spec: BackendSpec) -> dict[str, Any]:
    """The plugin's CLI options at their defaults, as ``forge serve`` would pass them."""
    # Parsed from an empty command line, so click processes defaults as for `forge serve`.
    command = click.Command("serve", params=list(spec.cli_options))
    with command.make_context("serve", []) as ctx:
        return dict(ctx.params)


def settings_for(
    spec: BackendSpec, harness: Harness, url: str, *, timeout: float = 10.0
) -> BackendSettings:
    return BackendSettings(
        backend_url=url,
        model=harness.model,
        timeout=timeout,
        options={**option_defaults(spec), **harness.options},
    )


__all__ = [
    "ENTRY_POINT_GROUP",
    "Harness",
    "OpenAIWireHarness",
    "SERVED_MODEL",
    "harness_for",
    "option_defaults",
    "settings_for",
]
