"""Circuit breakers: the state machine by table, then over real HTTP to the fake server (an open
model is skipped without a call; every model open defers the request or answers with the
embedded model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from llm_consumer.errors import PermanentFailure, TransientFailure
from llm_consumer.events.results import TokenUsage
from llm_consumer.heartbeat import model_components
from llm_consumer.metrics import REGISTRY
from llm_consumer.providers.base import StreamSink, TextCompletion, TextJob
from llm_consumer.providers.breaker import Breaker, BreakerBoard, CircuitOpen, trips
from llm_consumer.providers.open_circuit import OpenCircuitFallback
from llm_consumer.providers.openai_text import OpenAITextProvider
from tests.fakes.openai_server import DEFAULT_API_KEY, FakeOpenAI, invalid_request, server_error


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


# (step, expected state after it, whether a call is allowed after it)
#   fail/ok: a call's verdict; tick N: N seconds pass; allow: take the right to call
TABLE: list[tuple[str, str, bool]] = [
    ("fail", "closed", True),
    ("ok", "closed", True),  # a success resets the count
    ("fail", "closed", True),
    ("fail", "closed", True),
    ("fail", "open", False),  # the third in a row opens it
    ("tick 9", "open", False),
    ("tick 1", "half_open", True),  # after the 10 s cool-down: one probe
    ("allow", "half_open", False),  # the probe is out: nobody else
    ("fail", "open", False),  # the probe failed: another cool-down
    ("tick 10", "half_open", True),
    ("allow", "half_open", False),
    ("release", "half_open", True),  # a probe without a verdict frees the slot
    ("allow", "half_open", False),
    ("ok", "closed", True),  # the probe succeeded
    ("fail", "closed", True),
]


def test_the_state_machine_by_table() -> None:
    clock = Clock()
    changes: list[tuple[str, int]] = []
    breaker = Breaker(threshold=3, cooldown_s=10, clock=clock,
                      on_change=lambda state, failures: changes.append((state, failures)))
    for step, state, allowed in TABLE:
        if step == "fail":
            breaker.failed()
        elif step == "ok":
            breaker.succeeded()
        elif step == "allow":
            assert breaker.allow()
        elif step == "release":
            breaker.released()
        else:
            clock.now += float(step.split()[1])
        assert (breaker.state, not breaker.blocked()) == (state, allowed), step
    assert [state for state, _ in changes] == [
        "open", "half_open", "open", "half_open", "closed"]


def test_retry_after_counts_down_to_the_probe() -> None:
    clock = Clock()
    breaker = Breaker(threshold=1, cooldown_s=30, clock=clock)
    assert breaker.retry_after() == 0
    breaker.failed()
    clock.now += 12
    assert breaker.retry_after() == pytest.approx(18)
    clock.now += 18
    assert breaker.retry_after() == 0 and breaker.state == "half_open"


def test_only_outages_trip_a_breaker() -> None:
    assert trips(TransientFailure("502", code="provider_unavailable"))
    assert trips(TransientFailure("slow", code="timeout"))
    assert not trips(TransientFailure("429", code="rate_limited"))
    assert not trips(PermanentFailure("400", code="invalid_request"))


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


JOB = TextJob(system="rules", user="hello", schema_name="chat_answer", schema=None)


async def test_an_open_model_is_skipped_without_a_call() -> None:
    board = BreakerBoard("openai", threshold=2, cooldown_s=60, models=("flaky-a", "steady-b"))
    async with FakeOpenAI() as server:
        server.responder = lambda body: server_error(502) if body["model"] == "flaky-a" else None
        provider = OpenAITextProvider(DEFAULT_API_KEY, base_url=server.base_url,
                                      model="flaky-a", timeout_s=5,
                                      fallback_models=("steady-b",), breakers=board)
        try:
            answers = [await provider.complete(JOB) for _ in range(4)]
        finally:
            await provider.aclose()
    assert [a.model_used for a in answers] == ["steady-b"] * 4
    assert all(a.fallback_used for a in answers)
    # Two failures opened flaky-a; the next two requests went straight to steady-b.
    assert server.calls_by_model == {"flaky-a": 2, "steady-b": 4}
    assert board.states() == {"flaky-a": "open", "steady-b": "closed"}
    assert model_components(board) == {"model:openai/flaky-a": "down",
                                       "model:openai/steady-b": "ok"}
    assert metric("llm_breaker_state", provider="openai", model="flaky-a") == 2
    assert (metric("llm_breaker_skipped_calls_total", provider="openai", model="flaky-a")
            or 0) >= 2


async def test_a_refusal_is_not_an_outage() -> None:
    board = BreakerBoard("openai", threshold=1, cooldown_s=60)
    async with FakeOpenAI() as server:
        server.script(invalid_request("Invalid value for 'stop'."))
        provider = OpenAITextProvider(DEFAULT_API_KEY, base_url=server.base_url,
                                      model="gpt-4.1-mini", timeout_s=5, breakers=board)
        try:
            with pytest.raises(PermanentFailure):
                await provider.complete(JOB)
        finally:
            await provider.aclose()
    assert board.states() == {"gpt-4.1-mini": "closed"}


@dataclass
class Embedded:
    """A stand-in for the embedded model: answers at once, records what it was asked."""

    name: str = "local"
    jobs: list[TextJob] = field(default_factory=list)

    def models_for(self, requested: str | None) -> tuple[str, ...]:
        return ("smollm2-135m-instruct",)

    async def complete(self, job: TextJob, sink: StreamSink | None = None) -> TextCompletion:
        self.jobs.append(job)
        return TextCompletion("a simpler answer", "smollm2-135m-instruct",
                              TokenUsage(prompt_tokens=5, completion_tokens=3, total_tokens=8))

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize("mode", ["defer", "local"])
async def test_every_model_open_defers_or_answers_simpler(mode: str) -> None:
    clock = Clock()
    board = BreakerBoard("openai", threshold=1, cooldown_s=40, clock=clock)
    embedded = Embedded()
    async with FakeOpenAI() as server:
        server.responder = lambda body: server_error(503)
        remote = OpenAITextProvider(DEFAULT_API_KEY, base_url=server.base_url, model="a",
                                    timeout_s=5, fallback_models=("b",), breakers=board)
        provider = OpenCircuitFallback(remote, board, embedded if mode == "local" else None)
        try:
            outcomes: list[Any] = []
            for _ in range(2):
                clock.now += 15
                try:
                    outcomes.append(await provider.complete(JOB))
                except TransientFailure as error:
                    outcomes.append(error)
        finally:
            await provider.aclose()
    assert server.calls_by_model == {"a": 1, "b": 1}, "the second request made no call"
    if mode == "defer":
        first, second = outcomes
        assert isinstance(first, TransientFailure) and not isinstance(first, CircuitOpen)
        assert first.retry_after_s == pytest.approx(40)
        assert second.retry_after_s == pytest.approx(25), "the time left until half-open"
        assert "circuits open" in second.message
    else:
        assert [o.model_used for o in outcomes] == ["smollm2-135m-instruct"] * 2
        assert all(o.fallback_used for o in outcomes)
        assert [j.model for j in embedded.jobs] == [None, None]
