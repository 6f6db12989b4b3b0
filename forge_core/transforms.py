"""Request transforms: ordered rewrites of the outgoing body, registered by plugins."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from forge_core.backend import BackendRequest


@dataclass(frozen=True, slots=True)
class RequestTransform:
    name: str
    apply: Callable[[dict[str, Any], BackendRequest], dict[str, Any] | None]
    """Return a new body, or None for "unchanged". Must not mutate the body it receives."""
    order: int = 100
    backends: tuple[str, ...] = ()
    """Backend names this applies to; empty means every backend."""


def apply_transforms(
    transforms: Sequence[RequestTransform], backend: str, request: BackendRequest
) -> BackendRequest:
    """Run the transforms for ``backend`` in order; mark the request non-verbatim on change."""
    for transform in transforms:
        if transform.backends and backend not in transform.backends:
            continue
        changed = transform.apply(request.body, request)
        if changed is not None and changed is not request.body:
            request.body = changed
            request.verbatim = False
    return request
