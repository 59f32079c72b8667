"""The metered text provider on its own: the admission's first call goes out as admitted, every
further call is admitted against its model's limits first, the call cap holds, a fallback model
counts as itself - against the real Redis, with a provider that records what reached it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
import redis.asyncio as aioredis

from llm_consumer.admission.metered import MeteredText
from llm_consumer.admission.waits import Ticket
from llm_consumer.errors import Deferred, PermanentFailure, TransientFailure
from llm_consumer.events.results import TokenUsage
from llm_consumer.handlers.base import CallBudget
from llm_consumer.providers.base import StreamSink, TextCompletion, TextJob
from llm_consumer.store.admission import Admitted, Ask
from llm_consumer.store.guard import Guard
from llm_consumer.store.keys import Keys
from llm_consumer.store.limits_config import ModelRates, Rate
from llm_consumer.store.ratelimit import model_scopes
from tests.store.conftest import limits, make_guard

JOB = TextJob(system="You write backstories.", user="Mira, a dwarf", schema_name="backstory",
              schema=None, max_tokens=100)
KIND = "character.backstory"


@dataclass
class RecordingProvider:
    """Answers every model but those in `broken` (a 502 there); records the models called."""

    broken: frozenset[str] = frozenset()
    called: list[str] = field(default_factory=list)
    name: str = "recording"

    def models_for(self, requested: str | None) -> tuple[str, ...]:
        return (requested or "model-a",)

    async def complete(self, job: TextJob, sink: StreamSink | None = None) -> TextCompletion:
        model = self.models_for(job.model)[0]
        self.called.append(model)
        if model in self.broken:
            raise TransientFailure(f"{model}: 502", code="provider_unavailable")
        return TextCompletion('{"text": "ok"}', model,
                              TokenUsage(prompt_tokens=10, completion_tokens=5, total_tokens=15))

    async def aclose(self) -> None:
        return None


async def noticed(event_type: str, event: object) -> None:
    return None


@pytest.fixture
def guard(redis: aioredis.Redis, keys: Keys) -> Guard:
    per_model = {m: ModelRates(requests=Rate(1, 60)) for m in ("model-a", "model-b")}
    return make_guard(redis, keys, limits=limits(models=per_model))


async def admitted_ticket(guard: Guard, calls: CallBudget | None = None) -> Ticket:
    """A ticket as the run stage hands it over: the request's admission covers model-a's call."""
    ask = Ask(KIND, "", tuple(model_scopes(guard.limits, "model-a", 115)))
    verdict = await guard.admission.admit(ask)
    assert isinstance(verdict, Admitted)
    return Ticket("model-a", KIND, noticed, calls or CallBudget(), ask=ask, admitted=verdict)


async def test_the_admitted_first_call_goes_out_and_a_second_waits_for_its_own_slot(
        guard: Guard) -> None:
    inner = RecordingProvider()
    metered = MeteredText(inner, guard).for_request(await admitted_ticket(guard))
    completion = await metered.complete(JOB)
    assert completion.model_used == "model-a"
    with pytest.raises(Deferred) as deferred:  # model-a's 1/min is spent by the first call
        await metered.complete(JOB)
    assert inner.called == ["model-a"], "the second call never reached the provider"
    assert deferred.value.retry_after_s > 50


async def test_every_call_counts_against_the_requests_cap(guard: Guard) -> None:
    metered = MeteredText(RecordingProvider(), guard).for_request(
        await admitted_ticket(guard, CallBudget(limit=1)))
    await metered.complete(JOB)
    with pytest.raises(PermanentFailure) as capped:
        await metered.complete(JOB)
    assert capped.value.code == "quota_exhausted"


async def test_a_fallback_model_is_admitted_as_itself(guard: Guard) -> None:
    inner = RecordingProvider(broken=frozenset({"model-a"}))
    ticket = await admitted_ticket(guard)
    metered = MeteredText(inner, guard, fallbacks=("model-b",)).for_request(ticket)
    completion = await metered.complete(JOB)
    assert inner.called == ["model-a", "model-b"]
    assert completion.model_used == "model-b" and completion.fallback_used
    with pytest.raises(Deferred):  # model-b's own slot is now spent; model-a's was the ticket's
        await MeteredText(inner, guard).for_request(ticket).complete(
            replace(JOB, model="model-b"))


async def test_without_a_ticket_calls_go_out_unmetered(
        guard: Guard, redis: aioredis.Redis, keys: Keys) -> None:
    inner = RecordingProvider()
    metered = MeteredText(inner, guard)
    for _ in range(3):
        await metered.complete(JOB)
    assert inner.called == ["model-a"] * 3
    assert not [k async for k in redis.scan_iter(match=f"{keys.prefix}*")]
