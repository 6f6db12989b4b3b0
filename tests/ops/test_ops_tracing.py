"""OpenTelemetry: one SERVER span per chat request, one CLIENT span per backend attempt, with
the GenAI semantic-convention attributes and forge's guardrail verdicts."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from forge_core.testing import (  # noqa: E402
    WEATHER_TOOL,
    ScriptedBackend,
    chat,
    forge_client,
    reply_error,
    reply_tool_call,
)

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def recording(http: object) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    http.forge_state.ops.tracer.tracer = provider.get_tracer("forge")  # type: ignore[attr-defined]
    return exporter


async def test_request_and_attempt_spans_carry_gen_ai_attributes_and_verdicts() -> None:
    backend = ScriptedBackend().push(
        reply_tool_call("get_weather", {"town": "Oslo"}),
        reply_tool_call("get_weather", {"city": "Oslo"}),
    )
    async with forge_client(backend) as http:
        spans = recording(http)
        r = await http.post("/v1/chat/completions", json=chat(tools=[WEATHER_TOOL]),
                            headers={"traceparent": PARENT})
        assert r.status_code == 200
    finished = spans.get_finished_spans()
    server = [s for s in finished if s.kind == SpanKind.SERVER]
    client = sorted((s for s in finished if s.kind == SpanKind.CLIENT),
                    key=lambda s: s.attributes["forge.attempt"])
    assert len(server) == 1 and len(client) == 2
    [request] = server
    assert request.name == "chat fake-model"
    assert request.attributes["gen_ai.operation.name"] == "chat"
    assert request.attributes["gen_ai.request.model"] == "fake-model"
    assert request.attributes["gen_ai.usage.input_tokens"] == 20  # both attempts
    assert request.attributes["http.response.status_code"] == 200
    assert tuple(request.attributes["forge.guardrail.notes"]) == ("retry:schema",)
    # The client's trace context is the parent.
    assert format(request.context.trace_id, "032x") == PARENT.split("-")[1]
    first, second = client
    for span in client:
        assert span.parent is not None and span.parent.span_id == request.context.span_id
        assert span.attributes["gen_ai.provider.name"] == "fake"
        assert span.attributes["server.address"] == "backend.test"
        assert span.attributes["gen_ai.usage.output_tokens"] == 5
        assert request.start_time <= span.start_time <= span.end_time <= request.end_time
    assert tuple(first.attributes["forge.guardrail.verdict"]) == ("retry:schema",)
    assert tuple(second.attributes["forge.guardrail.verdict"]) == ("accepted",)


async def test_a_failed_attempt_is_an_error_span() -> None:
    backend = ScriptedBackend().push(reply_error(500, {"error": "boom"}))
    async with forge_client(backend) as http:
        spans = recording(http)
        assert (await http.post("/v1/chat/completions", json=chat())).status_code == 502
    [attempt] = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert attempt.status.status_code == StatusCode.ERROR
    assert attempt.attributes["error.type"] == "http"
    [request] = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert request.status.status_code == StatusCode.ERROR
