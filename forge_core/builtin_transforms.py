"""The built-in request transforms, registered through the same hook as any plugin's.

``strip-billing-header``: Claude Code starts its system prompt with a line such as
``x-anthropic-billing-header: cc_version=2.1.331.471; cc_entrypoint=sdk-cli; cch=9f2c1;``
whose version suffix and ``cch`` hash change from request to request. Only Anthropic's own API
reads it; for every other backend it is the first thing in the prompt, so a changing value
makes each turn miss the backend's prefix cache and re-read the whole prompt. The transform
removes that line (and the system block when nothing else is in it). It is on for every
backend; a backend client that talks to the real Anthropic API declines it
(``BackendClient.declined_transforms``), and ``forge serve --no-transform strip-billing-header``
turns it off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from forge_core.backend import BackendRequest
from forge_core.hookspecs import hookimpl
from forge_core.transforms import RequestTransform

BILLING_HEADER = "x-anthropic-billing-header:"
STRIP_BILLING_HEADER = "strip-billing-header"


def strip_header_text(text: str) -> str | None:
    """``text`` without a leading billing-header line (and the blank lines after it), or None
    when it does not start with one."""
    if not text.lstrip().lower().startswith(BILLING_HEADER):
        return None
    _, _, rest = text.lstrip().partition("\n")
    return rest.lstrip("\n")


def _strip_parts(parts: list[Any]) -> list[Any] | None:
    """A list of text parts/blocks whose first one starts with the header, rewritten."""
    first = parts[0] if parts else None
    if not isinstance(first, dict) or not isinstance(first.get("text"), str):
        return None
    rest = strip_header_text(first["text"])
    if rest is None:
        return None
    return [{**first, "text": rest}, *parts[1:]] if rest else list(parts[1:])


def strip_openai(
    body: dict[str, Any], request: BackendRequest | None = None
) -> dict[str, Any] | None:
    """The OpenAI body with the header removed from its first system message (None: absent)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    first = messages[0]
    if not isinstance(first, dict) or first.get("role") not in ("system", "developer"):
        return None
    content = first.get("content")
    rest: Any
    if isinstance(content, str):
        rest = strip_header_text(content)
    elif isinstance(content, list):
        rest = _strip_parts(content)
    else:
        return None
    if rest is None:
        return None
    kept = [{**first, "content": rest}] if rest else []
    return {**body, "messages": [*kept, *messages[1:]]}


def strip_anthropic(body: dict[str, Any]) -> dict[str, Any] | None:
    """The Anthropic body with the header removed from ``system`` (None: absent)."""
    system = body.get("system")
    rest: Any
    if isinstance(system, str):
        rest = strip_header_text(system)
    elif isinstance(system, list):
        rest = _strip_parts(system)
    else:
        return None
    if rest is None:
        return None
    out = dict(body)
    if rest:
        out["system"] = rest
    else:
        del out["system"]
    return out


TRANSFORMS = (
    RequestTransform(
        name=STRIP_BILLING_HEADER,
        apply=strip_openai,
        apply_original=strip_anthropic,
        order=10,
        description="drop Claude Code's per-request x-anthropic-billing-header line "
        "(keeps the prompt prefix, and so the backend's cache, stable)",
    ),
)


@hookimpl
def forge_register_request_transforms(register: Callable[[RequestTransform], None]) -> None:
    """Register forge's own transforms (see the module docstring)."""
    for transform in TRANSFORMS:
        register(transform)
