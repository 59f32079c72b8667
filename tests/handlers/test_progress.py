"""Streamed deltas coalesced into few content.progress events: by size and time, flushed before
the result, restarts dropping void text. A clock is injected; no broker needed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from llm_consumer.auth import Principal
from llm_consumer.client import build_request
from llm_consumer.events.envelope import Envelope
from llm_consumer.events.requests import ContentRequested
from llm_consumer.handlers.base import ProgressPolicy, Request
from llm_consumer.handlers.progress import ProgressSink


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sink_and_events(policy: ProgressPolicy) -> tuple[ProgressSink, list[Any], Clock]:
    events: list[Any] = []

    async def emit(event_type: str, data: BaseModel) -> None:
        events.append(data.model_dump())

    envelope = Envelope.model_validate(build_request("character.backstory",
                                                     {"context": {"name": "Mira"}}))
    request = Request(envelope=envelope, data=ContentRequested.model_validate(envelope.data),
                      principal=Principal("alice", frozenset()), attempt=0, emit=emit,
                      progress=policy)
    clock = Clock()
    return ProgressSink(request, clock=clock), events, clock


async def test_a_500_token_answer_costs_at_most_ten_events_at_the_defaults() -> None:
    sink, events, clock = sink_and_events(ProgressPolicy())
    tokens = [f" word{n % 10}" for n in range(500)]  # ~3,000 characters, 100 tokens a second
    for token in tokens:
        clock.now += 0.01
        await sink.delta(token)
    await sink.flush()
    assert 1 < len(events) <= 10
    assert "".join(e["delta"] for e in events) == "".join(tokens)
    assert [e["seq"] for e in events] == list(range(len(events)))


async def test_one_event_per_interval_even_for_a_fast_model() -> None:
    sink, events, clock = sink_and_events(ProgressPolicy(interval_s=0.1, min_chars=10))
    for _ in range(100):  # 100 deltas of 20 characters within 50 ms
        clock.now += 0.0005
        await sink.delta("x" * 20)
    await sink.flush()
    assert len(events) == 1  # the interval never passed: everything waits for the flush
    assert len(events[0]["delta"]) == 2000


async def test_a_slow_model_still_shows_progress() -> None:
    sink, events, clock = sink_and_events(ProgressPolicy(interval_s=0.1, min_chars=200))
    for _ in range(10):  # one short delta a second, never 200 characters
        clock.now += 1.0
        await sink.delta("ok ")
    assert len(events) == 10


async def test_a_restart_drops_unsent_text_and_says_why() -> None:
    sink, events, _ = sink_and_events(ProgressPolicy(interval_s=0.1, min_chars=200))
    await sink.delta("{\"half\": ")
    await sink.restart("answer rejected: not JSON; asking once more")
    await sink.delta("{\"whole\": 1}")
    await sink.flush()
    assert [(e["delta"], e["reset"]) for e in events] == [
        ("", True), ("{\"whole\": 1}", False)]
    assert events[0]["notice"].startswith("answer rejected")
    assert [e["seq"] for e in events] == [0, 1]
