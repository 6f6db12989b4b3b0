"""Finding, loading and querying plugins: a typed facade over pluggy.

Entry points are loaded one at a time, so ``forge serve --plugin vllm`` imports only that
plugin and one broken plugin is reported (name, distribution, error) instead of breaking every
command. Hooks are called implementation by implementation for the same reason, and so that a
backend name registered twice can be blamed on both plugins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from forge_core import hookspecs
from forge_core.backend import BackendSpec
from forge_core.errors import PluginError
from forge_core.guardrails.records import RescueParser
from forge_core.transforms import RequestTransform

log = logging.getLogger("forge.plugins")

BUILTIN_PLUGINS = ("forge_core.guardrails.builtin",)


@dataclass(frozen=True, slots=True)
class InstalledPlugin:
    """A plugin found in the entry-point group (not imported yet)."""

    name: str
    distribution: str
    version: str
    entry_point: EntryPoint


def installed_plugins() -> dict[str, InstalledPlugin]:
    """Every plugin installed in ``forge.backends``, by entry-point name. Imports nothing."""
    found: dict[str, InstalledPlugin] = {}
    for ep in entry_points(group=hookspecs.ENTRY_POINT_GROUP):
        dist = ep.dist
        found[ep.name] = InstalledPlugin(
            name=ep.name,
            distribution=dist.metadata["Name"] if dist else "?",
            version=dist.version if dist else "?",
            entry_point=ep,
        )
    return found


def install_hint(name: str) -> str:
    return f"pip install forge-proxy-{name}"


class PluginHost:
    """The loaded plugins and what they registered. One per process (or per test)."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.distributions: dict[str, str] = {}
        self.failures: dict[str, str] = {}
        self._backends: dict[str, BackendSpec] | None = None
        for module_name in BUILTIN_PLUGINS:
            self.register(__import__(module_name, fromlist=["_"]), "forge-builtin", "builtin")

    def register(self, plugin: ModuleType | object, name: str, distribution: str = "") -> None:
        """Register an already-imported plugin object (also the way tests add fakes)."""
        self.pm.register(plugin, name=name)
        self.distributions[name] = distribution or name
        self._backends = None
        self.pm.check_pending()

    def load(self, names: Iterable[str] | None = None, *, strict: bool = False) -> None:
        """Import and register installed plugins: all of them, or only ``names``.

        A requested name that is not installed raises PluginError listing what is installed
        and how to install it. A plugin that fails to import is recorded in ``failures`` and
        skipped, unless ``strict`` or it was requested by name, when it raises PluginError.
        """
        installed = installed_plugins()
        wanted = list(names) if names is not None else sorted(installed)
        for name in wanted:
            info = installed.get(name)
            if info is None:
                raise PluginError(_missing_message(name, installed))
            try:
                module = info.entry_point.load()
            except Exception as exc:  # any import-time failure of third-party code
                reason = f"{type(exc).__name__}: {exc}"
                if strict or names is not None:
                    raise PluginError(
                        f"plugin '{name}' ({info.distribution} {info.version}) failed to load: "
                        f"{reason}"
                    ) from None
                self.failures[name] = reason
                log.warning("skipping plugin %s (%s): %s", name, info.distribution, reason)
                continue
            self.register(module, name, f"{info.distribution} {info.version}")

    # --- what the plugins registered -------------------------------------------------------

    def _collect(self, hook_name: str) -> list[tuple[str, Any]]:
        """Call one register hook per implementation; returns (plugin name, record) pairs."""
        records: list[tuple[str, Any]] = []
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            owner = impl.plugin_name

            def register(record: Any, _owner: str = owner) -> None:
                records.append((_owner, record))

            try:
                impl.function(register=register)
            except Exception as exc:
                raise PluginError(
                    f"plugin '{owner}' failed in {hook_name}: {type(exc).__name__}: {exc}"
                ) from None
        return records

    def backends(self) -> dict[str, BackendSpec]:
        if self._backends is None:
            specs: dict[str, BackendSpec] = {}
            owners: dict[str, str] = {}
            for owner, spec in self._collect("forge_register_backends"):
                if spec.name in specs:
                    raise PluginError(
                        f"backend '{spec.name}' is registered twice: by "
                        f"{self.distributions.get(owners[spec.name])} and by "
                        f"{self.distributions.get(owner)}; uninstall one of them"
                    )
                specs[spec.name] = spec
                owners[spec.name] = owner
            self._backends = specs
        return self._backends

    def rescue_parsers(self) -> list[RescueParser]:
        return _ordered(record for _, record in self._collect("forge_register_rescue_parsers"))

    def transforms(self) -> list[RequestTransform]:
        return _ordered(record for _, record in self._collect("forge_register_request_transforms"))


def _ordered(records: Iterable[Any]) -> list[Any]:
    key: Callable[[Any], tuple[int, str]] = lambda r: (r.order, r.name)  # noqa: E731
    return sorted(records, key=key)


def _missing_message(name: str, installed: dict[str, InstalledPlugin]) -> str:
    have = ", ".join(sorted(installed)) if installed else "none"
    return (
        f"backend plugin '{name}' is not installed (installed plugins: {have}). "
        f"Install it with: {install_hint(name)}"
    )
