"""The proxy's settings, resolved once from the command line and then frozen."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from forge_core.backend import BackendSettings

DEFAULT_MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GuardrailSettings:
    max_retries: int = 3
    rescue: bool = True
    inject_respond_tool: bool = False
    keepalive_interval: float = 5.0
    """Seconds of silence while holding a call before a keep-alive comment/ping is sent."""
    constrained_retry: bool = True
    """Let a plugin that declares ``constrained_decoding`` constrain retries (JSON schema,
    grammar, forced tool_choice); off, retries carry only the corrective messages."""
    retry_context: Literal["clean", "feedback"] = "clean"
    """A constrained retry re-asks the client's conversation as it was (``clean``: the
    constraint does the correcting) or adds the failed turn and a correction (``feedback``).
    Unconstrained retries always carry the feedback: without it they would repeat the answer."""
    placeholder_check: bool = True
    """Reject arguments that only name a parameter, a tool or a ``<...>`` template."""
    auto_intent: bool = True
    """Under ``tool_choice: auto``, prose that clearly tries to use an offered tool (written as
    a function, in backticks, in code) before any tool result is a failed call, retried."""
    auto_decide: bool = False
    """With ``auto_intent``: a prose answer that refuses or describes the task (and that no
    other check caught) gets a retry constrained to one call or ``respond(message)``."""
    auto_relevance: bool = True
    """Rank the offered tools by how clearly the user's last message asks for each (words of
    the tools' own names, descriptions and parameters): under ``auto`` with ``auto_intent``,
    a prose answer to a request that clearly asks for a tool is a failed call; under any
    choice, a constrained retry among several tools targets the one asked for."""


@dataclass(frozen=True, slots=True)
class ServeConfig:
    backend: BackendSettings
    plugin: str
    host: str = "127.0.0.1"
    port: int = 8081
    max_body_bytes: int = DEFAULT_MAX_BODY
    api_key: str | None = field(default=None, repr=False)
    """forge's own optional key; clients send it as Bearer or x-api-key. Never logged."""
    guardrails: GuardrailSettings = field(default_factory=GuardrailSettings)
    max_concurrency: int = 0
    """Requests sent to the backend at once; 0 means unlimited (no serialization)."""
    max_queue: int = 64
    """Requests allowed to wait for a slot before new ones get 503."""
    stream_start_grace: float = 20.0
    """Seconds a streamed request waits for the backend's first event before the 200 and
    keep-alives start (errors after that arrive as in-stream error events)."""
    disabled_transforms: tuple[str, ...] = ()
    """Request transforms turned off by name (``--no-transform``)."""
    any_model: bool = False
    """Serve every requested model name with the backend's model (for clients such as Claude
    Code that send their own model names); off by default, when unknown names get 404."""
    metrics: bool = True
    """Serve Prometheus ``/metrics`` and count every request (see docs/operations.md)."""
    metrics_public: bool = False
    """Serve ``/metrics`` without forge's API key (for a scraper inside a trusted network)."""
    inspect: int = 0
    """Keep the last N requests for ``/forge/requests`` and ``/forge/``; 0 turns it off."""
    drain_delay: float = 0.0
    """On SIGTERM, seconds ``/ready`` answers 503 while requests are still served, before the
    listener closes: the time a load balancer needs to stop sending."""
    workers: int = 1
