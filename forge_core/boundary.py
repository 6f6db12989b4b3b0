"""The error boundary around plugin code: backend clients, rescue parsers, request transforms.

Plugin code is third-party code, so any exception can come out of it. The rules:

* A backend client that raises anything but a :class:`~forge_core.errors.ForgeError` fails the
  request with :class:`PluginFailure`: a 502 in the client's own error shape naming the plugin
  and the exception's class. The exception's message stays out of the answer (it may quote a
  URL with credentials or a key); the traceback goes to the log, once.
* A rescue parser or a request transform that raises is skipped for that request: the request
  goes on without it, with a note (``rescue-failed:NAME``, ``transform-failed:NAME``) in the
  ``x-forge-guardrail`` header and the request's log line, and one log line with the traceback.

Notes reach the request through a context variable: the guardrail engine sets it around each
piece of plugin code it runs (:class:`noting`), so parsers and transforms need no handle to the
request, and the engine hands those notes out with its own.
"""

from __future__ import annotations

import contextvars
import logging
import traceback
from collections.abc import Iterable
from types import TracebackType

from forge_core.backend import BackendClient, BackendStatus
from forge_core.errors import BackendError, ForgeError

log = logging.getLogger("forge.plugins")

_notes: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "forge_request_notes", default=None
)


class PluginFailure(BackendError):
    """A backend plugin raised an exception that is not a ForgeError (a bug in the plugin)."""

    def __init__(self, plugin: str, error_class: str) -> None:
        super().__init__(
            plugin, f"failed in its plugin code ({error_class}); the traceback is in forge's log."
        )
        self.error_class = error_class
        self.code = "plugin_error"


class InternalError(ForgeError):
    """An exception raised by forge itself, not by a plugin: 500, details only in the log."""

    def __init__(self, error_class: str) -> None:
        super().__init__(f"forge failed internally ({error_class}); see forge's log.")
        self.code = "internal_error"


class noting:  # noqa: N801 - used like a function: ``with noting(sink):``
    """Within the block, boundary notes of the current context go to ``sink``.

    Never let a block span a ``yield`` of an async generator: the generator may resume in
    another task's context, where the variable cannot be reset.
    """

    __slots__ = ("_sink", "_token")

    def __init__(self, sink: list[str]) -> None:
        self._sink = sink
        self._token: contextvars.Token[list[str] | None] | None = None

    def __enter__(self) -> list[str]:
        self._token = _notes.set(self._sink)
        return self._sink

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _notes.reset(self._token)
            self._token = None


def note(text: str) -> bool:
    """Add ``text`` to the current request's notes; False if it was already there."""
    notes = _notes.get()
    if notes is None:
        return True
    if text in notes:
        return False
    notes.append(text)
    return True


def plugin_code_failed(kind: str, name: str, origin: str, exc: BaseException) -> None:
    """A rescue parser or transform raised: note it, and log it once per request."""
    if note(f"{kind}-failed:{name}"):
        log.error(
            "%s '%s' (%s) raised %s; skipped for this request\n%s",
            kind, name, origin, type(exc).__name__, _format(exc),
        )


def as_forge_error(
    exc: Exception, client: BackendClient | None, plugin: str, *, blame_plugin: bool = False
) -> ForgeError:
    """The error a request fails with when ``exc`` escaped; logs it with its traceback.

    A ForgeError stays itself. Anything else is blamed on the backend plugin when the
    traceback passes through the client's own code (or ``blame_plugin``), else on forge.
    """
    if isinstance(exc, ForgeError):
        return exc
    name = type(exc).__name__
    if blame_plugin or (
        client is not None and _raised_in(exc.__traceback__, _client_modules(client))
    ):
        log.error("backend plugin '%s' raised %s\n%s", plugin, name, _format(exc))
        return PluginFailure(plugin, name)
    log.error("forge raised %s\n%s", name, _format(exc))
    return InternalError(name)


async def safe_status(client: BackendClient, plugin: str) -> BackendStatus:
    """``client.status()``, with a reason instead of an exception whatever the plugin does."""
    try:
        status = await client.status()
    except Exception as exc:
        error = as_forge_error(exc, client, plugin)
        return BackendStatus(ready=False, detail=error.message)
    if not isinstance(status, BackendStatus):
        return BackendStatus(
            ready=False,
            detail=f"Backend plugin '{plugin}' answered status() with "
            f"{type(status).__name__}, not a BackendStatus.",
        )
    return status


def _client_modules(client: BackendClient) -> set[str]:
    """Modules holding the client's code: every class of its MRO below BackendClient."""
    modules: set[str] = set()
    for cls in type(client).__mro__:
        if cls in (BackendClient, object):
            continue
        modules.add(cls.__module__)
    top = type(client).__module__.split(".")[0]
    if top != "forge_core":
        modules.add(top)  # a plugin package: its helper modules count as well
    return modules


def _raised_in(tb: TracebackType | None, modules: Iterable[str]) -> bool:
    wanted = tuple(modules)
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module in wanted or module.startswith(tuple(m + "." for m in wanted)):
            return True
        tb = tb.tb_next
    return False


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()
