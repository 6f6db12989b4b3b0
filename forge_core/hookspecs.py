"""The hooks a forge plugin can implement. This module is the whole plugin API.

Every hook is a ``register`` hook: it is called once, at start-up, after the plugin is
loaded, and it must only describe things (no network or disk I/O, no threads). Live
discovery, such as the models a server serves, happens later in ``BackendClient.start``.

Implement a hook with the :data:`hookimpl` marker in a module that your distribution exposes
in an entry-point group: ``forge.backends`` for a plugin that registers a backend (loaded only
when chosen with ``forge serve --plugin NAME``), ``forge.plugins`` for one that registers only
rescue parsers or request transforms (loaded by every ``forge serve`` unless disabled with
``--disable-plugin NAME``)::

    from forge_core.hookspecs import hookimpl

    @hookimpl
    def forge_register_backends(register):
        register(BackendSpec(name="mybackend", ...))

Hooks are called through pluggy, which passes an implementation only the arguments it
declares: declare just the ones you use (usually only ``register``), and new arguments added
to a hook later will not break your plugin.

Order never depends on pluggy's registration order: rescue parsers and request transforms
carry an explicit ``order`` (lower runs first) and ``forge plugins`` shows it.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from forge_core.backend import BackendSpec
from forge_core.guardrails.records import RescueParser
from forge_core.transforms import RequestTransform

PROJECT = "forge"
ENTRY_POINT_GROUP = "forge.backends"
"""Distributions that register a backend (and possibly parsers and transforms with it)."""
PLUGIN_GROUP = "forge.plugins"
"""Distributions that register no backend: rescue parsers, request transforms."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def forge_register_backends(
    register: Callable[[BackendSpec], None], forge_version: str
) -> None:
    """Register backends: call ``register(BackendSpec(...))`` once per backend.

    Called once at start-up for every loaded plugin. The spec carries the backend's name, its
    client factory, its declared :class:`~forge_core.backend.Capabilities`, its model identity
    rule (``derive_identity``: served name -> wire name and registry key) and its extra CLI
    options. Two plugins registering the same name is a start-up error naming both.
    ``forge_version`` is the host's version. Returns nothing.
    """


@hookspec
def forge_register_rescue_parsers(
    register: Callable[[RescueParser], None], forge_version: str
) -> None:
    """Register parsers that recognise a tool call printed as text: ``register(RescueParser(...))``.

    Called once at start-up. A parser receives the assistant text and the names of the
    request's tools and returns the calls it found (or an empty list); it must never raise on
    any input. Its ``markers`` are the text openings that may start its format: while streaming,
    forge holds text back only from a marker on. Parsers run by ascending ``order``; the first
    one that finds a call for a known tool wins. A parser that raises anyway is skipped for that
    request with a note (``rescue-failed:NAME``). Returns nothing.
    """


@hookspec
def forge_register_request_transforms(
    register: Callable[[RequestTransform], None], forge_version: str
) -> None:
    """Register request transforms: ``register(RequestTransform(...))``.

    Called once at start-up. A transform receives the outgoing OpenAI-shaped body and its
    context and returns a new body, or None to leave it unchanged. Any change makes the
    request non-verbatim for that attempt. Transforms run by ascending ``order``, and only for
    the backends they name (all backends when ``backends`` is empty). A transform that raises is
    skipped for that request with a note (``transform-failed:NAME``). Returns nothing.
    """
