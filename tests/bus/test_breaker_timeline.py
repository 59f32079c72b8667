"""A provider that fails, then recovers, end to end over RabbitMQ: the model's circuit goes
closed -> open -> half_open -> closed. Request A's two failed calls open it and A is deferred
until the half-open time; request B, sent while it is open, is deferred without a call; A's
retry is the probe that closes it, and B is answered after. The heartbeat shows the model's
availability all along. The timeline is printed (`pytest -s`)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

from structlog.testing import capture_logs

from llm_consumer.events import catalog
from tests.conftest import Service
from tests.fakes.openai_server import server_error
from tests.hub import Tap, tap

MODEL = "gpt-5-nano"
COMPONENT = f"model:openai/{MODEL}"
COOLDOWN_S = 4.5  # A's deferral then lands in the 5 s delay queue, just after half-open


def ask(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "cache": False}


async def until_model_is(beats: Tap, status: str) -> None:
    while not any(b["data"]["components"].get(COMPONENT) == status for b in beats.events):
        await beats.wait_for(catalog.SERVICE_HEARTBEAT, count=len(beats.events) + 1)


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def test_a_failing_then_recovering_provider_opens_and_closes_its_circuit(
        openai_service: Any, fake_openai: Any) -> None:
    fake_openai.script(server_error(502), server_error(502))  # then it answers again
    service: Service = await openai_service(breaker_failure_threshold=2,
                                            breaker_cooldown_s=COOLDOWN_S,
                                            heartbeat_every_s=0.25)
    async with tap(service.settings, catalog.SERVICE_HEARTBEAT) as beats:
        started = time.time()
        with capture_logs() as logs:
            first = asyncio.create_task(service.request("chat.completion",
                                                        ask("Is the bridge safe?")))
            await asyncio.wait_for(until_model_is(beats, "down"), 30)
            sent_b = time.time()
            second = await service.request("chat.completion", ask("Who guards it?"))
            first_result = await first
        after = await beats.wait_for(catalog.SERVICE_HEARTBEAT, count=len(beats.events) + 1)

    for result in (first_result, second):
        final = result.final
        assert final is not None and final["type"] == catalog.CONTENT_GENERATED, final
        assert final["data"]["model_used"] == MODEL

    changes = [(e["state"], e["at"]) for e in logs if e["event"] == "provider.breaker"]
    assert [state for state, _ in changes] == ["open", "half_open", "closed"]
    opened, half_open, closed = (at for _, at in changes)
    assert half_open - opened >= COOLDOWN_S
    # Provider calls on the same clock: A's two failures, none while open, A's probe, then B.
    now_wall, now_mono = time.time(), time.monotonic()
    calls = [now_wall - (now_mono - r.received_at) for r in fake_openai.chat_requests]
    assert len(calls) == 4, "B's attempt while open made no call"
    assert calls[1] <= opened + 0.05 <= sent_b and calls[2] >= half_open - 0.05
    assert not [c for c in calls if opened + 0.05 < c < half_open - 0.05]
    settled = sorted(e["outcome"] for e in logs if e["event"] == "message.settled")
    assert settled == ["completed"] * 2 + ["retry"] * 3, "A: 2 failures; B: 1 deferral"

    states = [b["data"]["components"].get(COMPONENT) for b in beats.events]
    assert states[0] == "ok" and after[-1]["data"]["components"][COMPONENT] == "ok"
    assert states.index("down") < states.index("degraded")

    heartbeats = [(epoch(b["time"]), f"heartbeat {COMPONENT}: {state}")
                  for b, state in zip(beats.events, states, strict=True)]
    timeline = sorted([(at, f"breaker -> {state}") for state, at in changes]
                      + [(at, f"call {i + 1} to {MODEL}") for i, at in enumerate(calls)]
                      + [(sent_b, "request B sent")]
                      + [(at, what) for at, what in heartbeats if at <= closed + 0.3])
    print("\nbreaker timeline (seconds from request A):")
    last = None
    for at, what in timeline:
        if what != last:  # a heartbeat repeating the same state is left out
            print(f"  {at - started:7.2f}s  {what}")
        last = what
