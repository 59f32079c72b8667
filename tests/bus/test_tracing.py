"""One trace from a peer's request to its result and to the provider call (W3C Trace Context,
as a CloudEvents extension or as AMQP headers), and the spans of the request's stages."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from llm_consumer.client import build_request
from llm_consumer.events import catalog
from tests.conftest import Service

BACKSTORY = {"context": {"name": "Mira", "class": "Rogue"}}


class Recorder(SpanExporter):
    """Keeps finished spans while a test listens (the provider lives for the whole process)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.listening = False

    def export(self, spans: Any) -> SpanExportResult:
        if self.listening:
            self.spans.extend(spans)
        return SpanExportResult.SUCCESS


_RECORDER = Recorder()


@pytest.fixture
def spans() -> Iterator[Recorder]:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_RECORDER))
        trace.set_tracer_provider(provider)
    _RECORDER.spans.clear()
    _RECORDER.listening = True
    yield _RECORDER
    _RECORDER.listening = False


def traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def trace_id_of(value: str) -> str:
    return value.split("-")[1]


async def test_one_trace_from_request_to_result_and_provider_call(
        openai_service: Any, fake_openai: Any, spans: Recorder) -> None:
    service: Service = await openai_service()
    trace_id, parent = traceparent()
    request = build_request("character.backstory", BACKSTORY)
    request["traceparent"] = parent
    request["tracestate"] = "peer=character-service"
    result = await service.send(request, auth=_token())
    assert result.final is not None and result.final["type"] == catalog.CONTENT_GENERATED
    for event in result.events:  # results and notices alike
        assert trace_id_of(event["traceparent"]) == trace_id, event["type"]
        assert event["tracestate"] == "peer=character-service"
    assert result.final["traceparent"] != parent  # a span of the service, in the caller's trace
    [call] = fake_openai.chat_requests
    assert trace_id_of(call.headers["traceparent"]) == trace_id

    names = {span.name for span in spans.spans if span.context.trace_id == int(trace_id, 16)}
    print(f"\ntrace {trace_id}: request traceparent {parent}; "
          f"result {result.final['traceparent']}; provider call {call.headers['traceparent']}; "
          f"spans {sorted(names)}")
    assert {"llm.request content.requested", "llm.queue_wait", "llm.admission",
            "llm.provider.call", "llm.publish"} <= names
    request_span = next(s for s in spans.spans if s.name == "llm.request content.requested")
    assert request_span.parent is not None and request_span.parent.span_id == int(
        parent.split("-")[2], 16)


async def test_trace_context_in_amqp_headers_and_a_malformed_one(
        openai_service: Any, fake_openai: Any, spans: Recorder) -> None:
    from tests.bus.test_tenant_isolation import publish
    from tests.hub import tap

    service: Service = await openai_service()
    trace_id, parent = traceparent()
    by_header = build_request("character.backstory", BACKSTORY)
    forged = build_request("character.backstory", {"context": {"name": "Other"}})
    forged["traceparent"] = "00-zzzz-not-a-trace"
    async with tap(service.settings, catalog.CONTENT_GENERATED) as hub:
        await publish(service, by_header, auth=_token(), headers={"traceparent": parent})
        await publish(service, forged, auth=_token())
        [first] = await hub.wait_for(catalog.CONTENT_GENERATED, by_header["id"])
        [second] = await hub.wait_for(catalog.CONTENT_GENERATED, forged["id"])
    assert trace_id_of(first["traceparent"]) == trace_id
    # A malformed traceparent is ignored: the service starts a trace of its own.
    assert "zzzz" not in second["traceparent"]
    assert trace_id_of(second["traceparent"]) != trace_id


def _token() -> str:
    from tests.conftest import token

    return token("llm:content")
