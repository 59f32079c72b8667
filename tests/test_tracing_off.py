"""Without the OpenTelemetry SDK (TRACING=off, the default) nothing is recorded, but the
caller's trace context still travels through every stage to what the service sends. Run in a
fresh interpreter: once a process installs the SDK (tests/bus/test_tracing.py), it stays."""

from __future__ import annotations

import secrets

from tests.fresh_process import printed_lines


def test_stages_pass_the_callers_trace_context_on_without_an_sdk() -> None:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    caller = f"00-{trace_id}-{span_id}-01"
    lines = printed_lines(f"""
from llm_consumer import tracing
parent = tracing.incoming({{"traceparent": "{caller}"}}, None)
with tracing.request_span("llm.request", parent, queued_at=None, attributes={{}}):
    with tracing.stage("llm.admission", model="m") as admission:
        with tracing.stage("llm.provider") as provider:
            print(admission.is_recording(), provider.is_recording())
            print(tracing.outgoing()["traceparent"])
print(tracing.outgoing())
""")
    assert lines == ["False False", caller, "{}"]
