"""Prometheus metrics, made with ``prometheus-client`` from each finished request record.

One :class:`Metrics` per app, on its own registry (tests build many apps in one process).
Under ``forge serve --workers N`` every worker writes its values to the directory in
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` reports the sum over all workers
(prometheus-client's multiprocess mode; gauges are summed over live workers).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from forge_core.observe import RequestRecord

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)
"""Seconds; model answers on CPU run into minutes."""
OVERHEAD_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)
"""Seconds; forge's own share is normally well under a millisecond."""


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """forge's metric families and how a request record updates them."""

    def __init__(self, backend: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.backend = backend
        r = self.registry
        self.requests = Counter(
            "forge_requests", "Requests answered, by endpoint, protocol, status and streaming.",
            ["endpoint", "protocol", "status", "streamed"], registry=r,
        )
        self.duration = Histogram(
            "forge_request_duration_seconds", "Total time from request to the last byte sent.",
            ["endpoint", "streamed"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.first_byte = Histogram(
            "forge_time_to_first_byte_seconds", "Time from request to the first body byte sent.",
            ["endpoint", "streamed"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.backend_time = Histogram(
            "forge_backend_duration_seconds",
            "Time spent in backend calls per request (all attempts together).",
            ["endpoint", "streamed"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.overhead = Histogram(
            "forge_overhead_seconds",
            "forge's own time per request that reached the backend: total minus backend time.",
            ["endpoint", "streamed"], buckets=OVERHEAD_BUCKETS, registry=r,
        )
        self.attempts = Counter(
            "forge_backend_requests", "Backend calls (first attempts and retries).",
            ["backend", "attempt"], registry=r,
        )
        self.guardrails = Counter(
            "forge_guardrail_events",
            "What the guardrails did: rescued (detail: parser), retry (detail: problem kinds), "
            "constrained, exhausted, retry-failed, ids-fixed, repaired, respond.",
            ["kind", "detail"], registry=r,
        )
        self.backend_errors = Counter(
            "forge_backend_errors",
            "Failed backend calls by kind: unreachable, timeout, http (with its status), protocol.",
            ["backend", "kind", "status"], registry=r,
        )
        self.tokens = Counter(
            "forge_backend_tokens", "Tokens as the backend reported them, by direction.",
            ["backend", "type"], registry=r,
        )

        def live_sum(name: str, documentation: str) -> Gauge:
            """A gauge that sums over the live worker processes."""
            return Gauge(name, documentation, registry=r, multiprocess_mode="livesum")

        self.in_flight = live_sum("forge_requests_in_flight", "API requests being handled now.")
        self.queue = live_sum("forge_queue_depth", "Requests waiting for a backend slot.")
        self.slots = live_sum(
            "forge_backend_slots_in_use", "Backend slots held (requests at the backend)."
        )
        self.workers = live_sum(
            "forge_workers", "forge worker processes serving (1 per live process)."
        )
        self.workers.set(1)
        self._children: dict[tuple[Any, ...], Any] = {}

    # --- updates ------------------------------------------------------------------------

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def flight(self, change: int) -> None:
        self.in_flight.inc(change)

    def limiter(self, waiting: int, held: int) -> None:
        if waiting:
            self.queue.inc(waiting)
        if held:
            self.slots.inc(held)

    def observe(self, record: RequestRecord) -> None:
        endpoint, streamed = record.path, "true" if record.streamed else "false"
        child = self._child
        child(self.requests, endpoint, record.protocol, str(record.status), streamed).inc()
        child(self.duration, endpoint, streamed).observe(record.seconds)
        if record.first_byte is not None:
            child(self.first_byte, endpoint, streamed).observe(record.first_byte)
        if record.attempts:
            backend = record.backend_seconds
            child(self.backend_time, endpoint, streamed).observe(backend)
            child(self.overhead, endpoint, streamed).observe(max(0.0, record.seconds - backend))
            self._attempts(record)
        for note in record.notes:
            kind, _, detail = note.partition(":")
            if kind == "retries-exhausted":
                kind = "exhausted"
            child(self.guardrails, kind, detail).inc()

    def _attempts(self, record: RequestRecord) -> None:
        backend = self.backend
        responded = False
        prompt = completion = 0
        for attempt in record.attempts:
            self._child(self.attempts, backend, "first" if attempt.index == 0 else "retry").inc()
            if attempt.error_kind and attempt.error_kind != "cancelled":
                status = str(attempt.error_status) if attempt.error_status else ""
                self._child(self.backend_errors, backend, attempt.error_kind, status).inc()
            if attempt.usage is not None:
                prompt += attempt.usage.prompt_tokens
                completion += attempt.usage.completion_tokens
            calls = (attempt.output or {}).get("tool_calls") or ()
            responded = responded or any(c.get("name") == "respond" for c in calls)
        if prompt:
            self._child(self.tokens, backend, "input").inc(prompt)
        if completion:
            self._child(self.tokens, backend, "output").inc(completion)
        if responded and _respond_injected(record):
            self._child(self.guardrails, "respond", "").inc()

    # --- exposition ---------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The exposition text: this process's registry, or the sum over all workers."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def _respond_injected(record: RequestRecord) -> bool:
    """The respond tool was forge's (the client has no tool of that name)."""
    call = record.call
    tools = getattr(call, "tools", None) or []
    return not any(
        isinstance(t, dict) and (t.get("function") or {}).get("name") == "respond" for t in tools
    )


def mark_worker_dead(pid: int) -> None:
    """Drop a finished worker's live gauges (multiprocess mode), so sums cover live ones."""
    path = multiprocess_dir()
    if path is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)
