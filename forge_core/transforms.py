"""Request transforms: ordered rewrites of the outgoing body, registered by plugins."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from forge_core.backend import BackendRequest
from forge_core.boundary import plugin_code_failed


@dataclass(frozen=True, slots=True)
class RequestTransform:
    name: str
    apply: Callable[[dict[str, Any], BackendRequest], dict[str, Any] | None]
    """Return a new body, or None for "unchanged". Must not mutate the body it receives."""
    order: int = 100
    backends: tuple[str, ...] = ()
    """Backend names this applies to; empty means every backend."""
    apply_original: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
    """The same rewrite for the client's raw body (``BackendRequest.original``), for backends
    that forward it verbatim (an Anthropic backend): when given, a change keeps the attempt
    verbatim, with both bodies rewritten alike. Must not mutate what it receives."""
    description: str = ""
    """One line for ``forge plugins``."""


def apply_transforms(
    transforms: Sequence[RequestTransform], backend: str, request: BackendRequest
) -> BackendRequest:
    """Run the transforms for ``backend`` in order; mark the request non-verbatim on change
    (unless the transform rewrote the client's original alike, see ``apply_original``).

    A transform that raises, or returns something other than a dict or None, is skipped for
    this request with a note (the error boundary: plugin code never fails a request).
    """
    for transform in transforms:
        if transform.backends and backend not in transform.backends:
            continue
        try:
            changed = transform.apply(request.body, request)
            if changed is not None and not isinstance(changed, dict):
                raise TypeError(f"returned {type(changed).__name__}, expected a dict or None")
            original = _rewrite_original(transform, request) if changed is not None else None
        except Exception as exc:
            origin = getattr(transform.apply, "__module__", None) or "?"
            plugin_code_failed("transform", transform.name, origin, exc)
            continue
        if changed is not None and changed is not request.body:
            request.body = changed
            if original is not None:
                request.original = original  # verbatim stays as it was: both bodies agree
            else:
                request.verbatim = False
    return request


def _rewrite_original(
    transform: RequestTransform, request: BackendRequest
) -> dict[str, Any] | None:
    """The client's original rewritten by ``transform``; None when it cannot be kept verbatim."""
    if transform.apply_original is None or not request.verbatim or request.original is None:
        return None
    rewritten = transform.apply_original(request.original)
    if rewritten is not None and not isinstance(rewritten, dict):
        raise TypeError(f"apply_original returned {type(rewritten).__name__}")
    return request.original if rewritten is None else rewritten


def active_transforms(
    transforms: Sequence[RequestTransform],
    disabled: Iterable[str] = (),
    declined: Iterable[str] = (),
) -> list[RequestTransform]:
    """``transforms`` minus those turned off (``--no-transform``) or declined by the client."""
    skip = set(disabled) | set(declined)
    return [t for t in transforms if t.name not in skip]
