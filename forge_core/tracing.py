"""Optional OpenTelemetry tracing with the GenAI semantic conventions (``gen_ai.*``).

Active when the ``opentelemetry-api`` package is importable (``pip install
'forge-proxy-core[otel]'``). Each chat request becomes a SERVER span, each backend attempt a
CLIENT span under it, both carrying forge's guardrail verdicts as ``forge.*`` attributes.
Spans are built from the finished request record with its recorded start and end times, so
the request path pays nothing while it runs.

Where spans go is the OpenTelemetry SDK's business: run forge under ``opentelemetry-instrument``,
or install the SDK and an OTLP exporter and set ``OTEL_EXPORTER_OTLP_ENDPOINT``: then
:func:`configure_from_env` installs a batching OTLP exporter (``OTEL_SERVICE_NAME``, default
``forge``).
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlsplit

from forge_core.observe import CHAT_PATHS, RequestRecord

log = logging.getLogger("forge.tracing")

try:  # the extra
    from opentelemetry import trace
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - exercised where the extra is absent
    trace = None  # type: ignore[assignment]


def available() -> bool:
    return trace is not None


def configure_from_env() -> bool:
    """Install an OTLP exporter when asked by the standard env vars and nothing else did."""
    if trace is None or not (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK or OTLP "
                    "exporter is missing: pip install 'forge-proxy-core[otel]'")
        return False
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return False  # opentelemetry-instrument (or the embedding app) set one up already
    service = os.environ.get("OTEL_SERVICE_NAME", "forge")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True


class Tracer:
    """Turns request records into spans."""

    def __init__(self, backend: str, base_url: str, provider: Any = None) -> None:
        assert trace is not None
        self.tracer = (provider or trace.get_tracer_provider()).get_tracer("forge")
        self.backend = backend
        parts = urlsplit(base_url)
        self.server = (parts.hostname or "", parts.port)

    def observe(self, record: RequestRecord) -> None:
        if record.path not in CHAT_PATHS:
            return
        model = _model(record)
        start = int(record.wall * 1e9)
        end = start + int(record.seconds * 1e9)
        parent_ctx = extract(record.trace_headers) if record.trace_headers else None
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "http.request.method": record.method,
            "url.path": record.path,
            "http.response.status_code": record.status,
            "forge.protocol": record.protocol,
            "forge.streamed": record.streamed,
            "forge.attempts": len(record.attempts),
            "forge.guardrail.notes": record.notes,
        }
        if model:
            attrs["gen_ai.request.model"] = model
        usage = record.usage
        if usage is not None:
            attrs["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attrs["gen_ai.usage.output_tokens"] = usage.completion_tokens
        span = self.tracer.start_span(
            f"chat {model}" if model else "chat", context=parent_ctx, kind=SpanKind.SERVER,
            attributes=attrs, start_time=start,
        )
        if not span.is_recording():  # no SDK configured: nothing more to build
            span.end(end_time=end)
            return
        if record.status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        ctx = trace.set_span_in_context(span)
        for attempt, notes in zip(record.attempts, record.attempt_notes(), strict=True):
            self._attempt(ctx, record, attempt, notes, model, start)
        span.end(end_time=end)

    def _attempt(
        self, ctx: Any, record: RequestRecord, attempt: Any, notes: list[str], model: str | None,
        request_start: int,
    ) -> None:
        begin = request_start + int((attempt.started - record.started) * 1e9)
        host, port = self.server
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": self.backend,
            "server.address": host,
            "forge.attempt": attempt.index,
            "forge.guardrail.verdict": notes or ["accepted"],
        }
        if port:
            attrs["server.port"] = port
        sent_model = (attempt.sent or {}).get("model") if attempt.sent else None
        if sent_model or model:
            attrs["gen_ai.request.model"] = sent_model or model
        if attempt.usage is not None:
            attrs["gen_ai.usage.input_tokens"] = attempt.usage.prompt_tokens
            attrs["gen_ai.usage.output_tokens"] = attempt.usage.completion_tokens
        finish = (attempt.output or {}).get("finish_reason")
        if finish:
            attrs["gen_ai.response.finish_reasons"] = [finish]
        if attempt.error_kind:
            attrs["error.type"] = attempt.error_kind
        span = self.tracer.start_span(
            f"chat {attrs.get('gen_ai.request.model', '')}".strip(), context=ctx,
            kind=SpanKind.CLIENT, attributes=attrs, start_time=begin,
        )
        if attempt.error_kind and attempt.error_kind != "cancelled":
            span.set_status(Status(StatusCode.ERROR, attempt.error or attempt.error_kind))
        span.end(end_time=begin + int(attempt.seconds * 1e9))


def _model(record: RequestRecord) -> str | None:
    call = record.call
    body = getattr(call, "original", None) or getattr(call, "body", None) or {}
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None
