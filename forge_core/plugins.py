"""Finding, loading and querying plugins: a typed facade over pluggy.

Two entry-point groups: ``forge.backends`` (a plugin that registers a backend; loaded one at a
time, so ``forge serve --plugin vllm`` imports only that one) and ``forge.plugins`` (rescue
parsers and request transforms only; every one is loaded unless disabled by name). A plugin
that fails to import, or whose hook raises, is reported (name, distribution, error) instead of
breaking every command.

Hooks are called through pluggy's hook relay, which passes each implementation only the
arguments it declares: a hook can gain arguments without breaking existing plugins. Each
plugin is called through its own subset of the relay (``subset_hook_caller``), so every record
is attributed to the plugin that registered it: a backend name registered twice names both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any, Literal

import pluggy

from forge_core import __version__, hookspecs
from forge_core.backend import BackendSpec
from forge_core.errors import PluginError
from forge_core.guardrails.records import RescueParser
from forge_core.transforms import RequestTransform

log = logging.getLogger("forge.plugins")

BUILTIN_PLUGINS = ("forge_core.guardrails.builtin",)
BUILTIN = "builtin"

Kind = Literal["backend", "extension", "builtin"]

HOOK_RECORDS: dict[str, type] = {
    "forge_register_backends": BackendSpec,
    "forge_register_rescue_parsers": RescueParser,
    "forge_register_request_transforms": RequestTransform,
}


@dataclass(frozen=True, slots=True)
class InstalledPlugin:
    """A plugin found in an entry-point group (not imported yet)."""

    name: str
    distribution: str
    version: str
    entry_point: EntryPoint
    group: str = hookspecs.ENTRY_POINT_GROUP


@dataclass(slots=True)
class Registered:
    """What one loaded plugin is and what it registered, for ``forge plugins``."""

    name: str
    kind: Kind
    distribution: str
    hooks: list[str] = field(default_factory=list)
    records: list[tuple[str, Any]] = field(default_factory=list)
    """(hook name, record) in registration order."""


def _installed(group: str) -> dict[str, InstalledPlugin]:
    found: dict[str, InstalledPlugin] = {}
    for ep in entry_points(group=group):
        dist = ep.dist
        found[ep.name] = InstalledPlugin(
            name=ep.name,
            distribution=dist.metadata["Name"] if dist else "?",
            version=dist.version if dist else "?",
            entry_point=ep,
            group=group,
        )
    return found


def installed_plugins() -> dict[str, InstalledPlugin]:
    """Every backend plugin installed (``forge.backends``), by entry-point name. Imports nothing."""
    return _installed(hookspecs.ENTRY_POINT_GROUP)


def installed_extensions() -> dict[str, InstalledPlugin]:
    """Every plugin installed in ``forge.plugins`` (no backend), by name. Imports nothing."""
    return _installed(hookspecs.PLUGIN_GROUP)


def install_hint(name: str) -> str:
    return f"pip install forge-proxy-{name}"


class PluginHost:
    """The loaded plugins and what they registered. One per process (or per test)."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.distributions: dict[str, str] = {}
        self.kinds: dict[str, Kind] = {}
        self.failures: dict[str, str] = {}
        """Plugin name -> why it was skipped (import failed, a hook raised, a bad record)."""
        self.disabled: list[str] = []
        self._cache: dict[str, list[tuple[str, Any]]] = {}
        for position, module_name in enumerate(BUILTIN_PLUGINS):
            module = __import__(module_name, fromlist=["_"])
            name = BUILTIN if position == 0 else module_name.removeprefix("forge_core.")
            self.register(module, name, "forge-builtin", kind="builtin")

    def register(
        self,
        plugin: ModuleType | object,
        name: str,
        distribution: str = "",
        *,
        kind: Kind = "backend",
    ) -> None:
        """Register an already-imported plugin object (also the way tests add fakes)."""
        try:
            hash(plugin)
        except TypeError:  # pluggy keeps plugins in sets (a SimpleNamespace is unhashable)
            plugin = _Hashable(plugin)
        self.pm.register(plugin, name=name)
        self.distributions[name] = distribution or name
        self.kinds[name] = kind
        self._cache.clear()
        self.pm.check_pending()

    def load(self, names: Iterable[str] | None = None, *, strict: bool = False) -> None:
        """Import and register installed backend plugins: all of them, or only ``names``.

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
            self._import(info, fatal=strict or names is not None, kind="backend")

    def load_extensions(self, disabled: Collection[str] = ()) -> None:
        """Import and register every ``forge.plugins`` plugin except those in ``disabled``.

        A disabled name that is not installed raises PluginError (a typo must not go unseen).
        A plugin that fails to import is recorded in ``failures`` and skipped.
        """
        installed = installed_extensions()
        unknown = sorted(set(disabled) - set(installed))
        if unknown:
            have = ", ".join(sorted(installed)) or "none"
            raise PluginError(
                f"--disable-plugin {', '.join(unknown)}: no such plugin in {hookspecs.PLUGIN_GROUP}"
                f" (installed there: {have})"
            )
        for name, info in sorted(installed.items()):
            if name in disabled:
                self.disabled.append(name)
                log.info("plugin %s (%s) disabled", name, info.distribution)
                continue
            if name in self.distributions:
                continue  # also a backend plugin's name: never register twice
            self._import(info, fatal=False, kind="extension")

    def _import(self, info: InstalledPlugin, *, fatal: bool, kind: Kind) -> None:
        try:
            module = info.entry_point.load()
        except Exception as exc:  # any import-time failure of third-party code
            reason = f"{type(exc).__name__}: {exc}"
            if fatal:
                raise PluginError(
                    f"plugin '{info.name}' ({info.distribution} {info.version}) failed to load: "
                    f"{reason}"
                ) from None
            self.failures[info.name] = reason
            log.warning("skipping plugin %s (%s): %s", info.name, info.distribution, reason)
            return
        self.register(module, info.name, f"{info.distribution} {info.version}", kind=kind)

    # --- calling the hooks -----------------------------------------------------------------

    def _collect(self, hook_name: str) -> list[tuple[str, Any]]:
        """Call one register hook, plugin by plugin; returns (plugin name, record) pairs.

        A backend plugin whose hook raises or registers a wrong record is a start-up error; a
        ``forge.plugins`` one is skipped (recorded in ``failures``), as when it fails to import.
        """
        if hook_name in self._cache:
            return self._cache[hook_name]
        records: list[tuple[str, Any]] = []
        expected = HOOK_RECORDS[hook_name]
        for owner, plugin in self._plugins_with(hook_name):
            found: list[Any] = []
            others = [p for _, p in self.pm.list_name_plugin() if p is not plugin]
            caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
            try:
                caller(register=found.append, forge_version=__version__)
                for record in found:
                    if not isinstance(record, expected):
                        raise TypeError(
                            f"registered {type(record).__name__}, expected {expected.__name__}"
                        )
            except Exception as exc:
                reason = f"failed in {hook_name}: {type(exc).__name__}: {exc}"
                if self.kinds.get(owner) != "extension":
                    raise PluginError(f"plugin '{owner}' {reason}") from None
                self._skip(owner, reason)
                continue
            records += [(owner, record) for record in found]
        self._cache[hook_name] = records
        return records

    def _plugins_with(self, hook_name: str) -> list[tuple[str, object]]:
        """Plugins implementing ``hook_name``, in registration order, failed ones left out."""
        caller = getattr(self.pm.hook, hook_name)
        owners = {impl.plugin_name for impl in caller.get_hookimpls()}
        return [
            (name, plugin)
            for name, plugin in self.pm.list_name_plugin()
            if name in owners and name not in self.failures
        ]

    def _skip(self, owner: str, reason: str) -> None:
        """Drop a ``forge.plugins`` plugin whose hook failed: none of its records count."""
        self.failures[owner] = reason
        log.warning("skipping plugin %s (%s): %s", owner, self.distributions.get(owner), reason)
        self._cache.clear()
        plugin = self.pm.get_plugin(owner)
        if plugin is not None:
            self.pm.unregister(plugin)

    # --- what the plugins registered -------------------------------------------------------

    def backends(self) -> dict[str, BackendSpec]:
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
        return specs

    def rescue_parsers(self) -> list[RescueParser]:
        return _ordered(self._unique("forge_register_rescue_parsers", "rescue parser"))

    def transforms(self) -> list[RequestTransform]:
        return _ordered(self._unique("forge_register_request_transforms", "request transform"))

    def _unique(self, hook_name: str, what: str) -> list[Any]:
        """Records by name; a name registered again by another plugin is dropped, logged."""
        seen: dict[str, str] = {}
        out: list[Any] = []
        for owner, record in self._collect(hook_name):
            if record.name in seen:
                log.warning(
                    "%s '%s' of plugin %s ignored: plugin %s registered that name first",
                    what, record.name, owner, seen[record.name],
                )
                continue
            seen[record.name] = owner
            out.append(record)
        return out

    def owner_of(self, hook_name: str, record_name: str) -> str | None:
        """The plugin that registered the record named ``record_name`` through ``hook_name``."""
        for owner, record in self._collect(hook_name):
            if record.name == record_name:
                return owner
        return None

    def describe(self) -> list[Registered]:
        """Every loaded plugin, its hooks and its records (in registration order)."""
        out: dict[str, Registered] = {}
        for name, plugin in self.pm.list_name_plugin():
            callers = self.pm.get_hookcallers(plugin) or []
            out[name] = Registered(
                name=name,
                kind=self.kinds.get(name, "backend"),
                distribution=self.distributions.get(name, name),
                hooks=sorted(c.name for c in callers),
            )
        for hook_name in HOOK_RECORDS:
            for owner, record in self._collect(hook_name):
                if owner in out:
                    out[owner].records.append((hook_name, record))
        return [out[name] for name in out if name in self.distributions]


class _Hashable:
    """A hashable stand-in for an unhashable plugin object, holding its public attributes
    (pluggy looks hook implementations up statically, so they are copied, not delegated)."""

    def __init__(self, inner: object) -> None:
        for name in dir(inner):
            if not name.startswith("__"):
                setattr(self, name, getattr(inner, name))
        self._forge_inner = inner


def _ordered(records: Iterable[Any]) -> list[Any]:
    key: Callable[[Any], tuple[int, str]] = lambda r: (r.order, r.name)  # noqa: E731
    return sorted(records, key=key)


def _missing_message(name: str, installed: dict[str, InstalledPlugin]) -> str:
    have = ", ".join(sorted(installed)) if installed else "none"
    return (
        f"backend plugin '{name}' is not installed (installed plugins: {have}). "
        f"Install it with: {install_hint(name)}"
    )


def hook_table(host: PluginHost) -> list[dict[str, Any]]:
    """Every plugin the host knows, for ``forge plugins``: kind, hooks, records with their
    order, and failures (import or hook) or ``disabled``."""
    rows: list[dict[str, Any]] = []
    for plugin in host.describe():
        rows.append(
            {
                "name": plugin.name,
                "kind": plugin.kind,
                "distribution": plugin.distribution,
                "hooks": plugin.hooks,
                "registered": [
                    {"hook": hook, "name": record.name, "order": getattr(record, "order", None)}
                    for hook, record in plugin.records
                ],
                "status": "failed" if plugin.name in host.failures else "loaded",
                "error": host.failures.get(plugin.name),
            }
        )
    listed = {row["name"] for row in rows}
    extensions = installed_extensions()
    for name, reason in sorted(host.failures.items()):
        if name not in listed:
            info = extensions.get(name) or installed_plugins().get(name)
            rows.append(_unloaded(name, info, "failed", reason))
    for name in host.disabled:
        rows.append(_unloaded(name, extensions.get(name), "disabled", None))
    return rows


def _unloaded(
    name: str, info: InstalledPlugin | None, status: str, error: str | None
) -> dict[str, Any]:
    kind = "backend" if info and info.group == hookspecs.ENTRY_POINT_GROUP else "extension"
    return {
        "name": name, "kind": kind,
        "distribution": f"{info.distribution} {info.version}" if info else name,
        "hooks": [], "registered": [], "status": status, "error": error,
    }
