"""The proxy's settings, resolved once from the command line and then frozen."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    any_model: bool = False
    """Serve every requested model name with the backend's model (for clients such as Claude
    Code that send their own model names); off by default, when unknown names get 404."""
