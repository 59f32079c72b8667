"""The run stage on its own: claim, cache, single-flight, handler, finish - every ending a value,
checked against the real Redis with a handler that counts its calls."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from llm_consumer.admission.run import Answer, run_admitted
from llm_consumer.auth import Principal
from llm_consumer.errors import TransientFailure
from llm_consumer.events import catalog
from llm_consumer.events.envelope import Envelope, new_event
from llm_consumer.events.requests import ContentRequested
from llm_consumer.events.results import ContentGenerated, JobStatus, TokenUsage
from llm_consumer.handlers.base import Deps, Reply, Request
from llm_consumer.store.guard import Guard
from llm_consumer.store.jobs import Claim, JobLedger
from llm_consumer.store.keys import Keys
from tests.store.conftest import make_guard, wait_until

Emitted = list[tuple[str, BaseModel]]


class CountingHandler:
    """A handler that answers after `gate` opens (at once by default) and counts its calls."""

    def __init__(self, *, fail: Exception | None = None) -> None:
        self.calls = 0
        self.fail = fail
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, request: Request, deps: Deps) -> list[Reply]:
        self.calls += 1
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        assert isinstance(request.data, ContentRequested)
        return [Reply(catalog.CONTENT_GENERATED, ContentGenerated(
            request_id=request.id, kind=request.data.kind.value, content={"name": "Mira"},
            text="Mira", model_used="gpt-5-nano", duration_ms=1,
            token_usage=TokenUsage(prompt_tokens=10, completion_tokens=5, total_tokens=15)))]


def make_request(emitted: Emitted, *, request_id: str | None = None, subject: str = "alice",
                 context: dict[str, Any] | None = None) -> Request:
    data = ContentRequested.model_validate(
        {"kind": "character.backstory", "context": context or {"name": "Mira"}})
    envelope = new_event(catalog.CONTENT_REQUESTED, data, source="/character-service")
    envelope = envelope.model_copy(update={"id": request_id or str(uuid.uuid4())})

    async def emit(event_type: str, event: BaseModel) -> None:
        emitted.append((event_type, event))

    return Request(envelope=envelope, data=data,
                   principal=Principal(subject, frozenset({"llm:content"})), attempt=0,
                   emit=emit, claims_job=True, source="/llm-service")


@pytest.fixture
def ledger(redis: aioredis.Redis, keys: Keys) -> JobLedger:
    return JobLedger(redis, keys, instance_id="replica-a", result_ttl_s=600, lease_s=30)


@pytest.fixture
def guard(redis: aioredis.Redis, keys: Keys, ledger: JobLedger) -> Guard:
    return make_guard(redis, keys, ledger=ledger)


DEPS = Deps(text=None)


def running_statuses(emitted: Emitted) -> list[JobStatus]:
    return [e for t, e in emitted if t == catalog.JOB_STATUS and isinstance(e, JobStatus)
            and e.state == "running"]


async def test_a_fresh_request_runs_once_and_its_events_are_recorded(
        guard: Guard, ledger: JobLedger) -> None:
    emitted: Emitted = []
    handler = CountingHandler()
    request = make_request(emitted)
    answer = await run_admitted(handler, request, DEPS, guard)
    assert isinstance(answer, Answer)
    assert handler.calls == 1
    assert [e.type for e in answer.events] == [catalog.CONTENT_GENERATED]
    assert answer.events[0].source == "/llm-service"
    assert len(running_statuses(emitted)) == 1, "job.status running once the claim is held"
    again = await ledger.claim_now(request.key)
    assert again.verdict == "done", "the final events were recorded with the admission's finish"
    stored = Envelope.model_validate_json(again.stored_events[0])
    assert stored.id == answer.events[0].id


async def test_a_request_the_ledger_knows_comes_back_as_its_claim(guard: Guard) -> None:
    emitted: Emitted = []
    handler = CountingHandler()
    first = make_request(emitted)
    await run_admitted(handler, first, DEPS, guard)
    resend = make_request(emitted, request_id=first.id)
    known = await run_admitted(handler, resend, DEPS, guard)
    assert isinstance(known, Claim) and known.verdict == "done"
    assert handler.calls == 1, "a re-send is answered from the ledger, not generated again"


async def test_the_same_question_by_another_request_is_a_cache_hit(guard: Guard) -> None:
    handler = CountingHandler()
    await run_admitted(handler, make_request([]), DEPS, guard)
    emitted: Emitted = []
    hit = await run_admitted(handler, make_request(emitted), DEPS, guard)
    assert isinstance(hit, Answer)
    assert handler.calls == 1
    data = hit.replies[0].data
    assert isinstance(data, ContentGenerated) and data.cached
    assert running_statuses(emitted) == [], "a hit waits on nothing: no job.status running"
    assert [e.type for e in hit.events] == [catalog.CONTENT_GENERATED]


async def test_another_callers_request_with_the_same_id_runs_on_its_own(guard: Guard) -> None:
    handler = CountingHandler()
    request_id = str(uuid.uuid4())
    await run_admitted(handler, make_request([], request_id=request_id), DEPS, guard)
    mallory = await run_admitted(handler, make_request([], request_id=request_id,
                                                       subject="mallory",
                                                       context={"name": "Other"}), DEPS, guard)
    assert isinstance(mallory, Answer), "ids are scoped by caller: no claim of Alice's is seen"
    assert handler.calls == 2


async def test_identical_requests_at_once_make_one_call_and_each_claims_its_own_job(
        guard: Guard, ledger: JobLedger) -> None:
    handler = CountingHandler()
    handler.gate.clear()
    emitted: list[Emitted] = [[] for _ in range(4)]
    requests = [make_request(e) for e in emitted]
    runs = [asyncio.create_task(run_admitted(handler, r, DEPS, guard)) for r in requests]
    # Every request holds its own claim (job.status running) before the leader answers.
    await wait_until(lambda: all(running_statuses(e) for e in emitted))
    handler.gate.set()
    answers = await asyncio.gather(*runs)
    assert handler.calls == 1, "local followers wait on the leader"
    assert all(isinstance(a, Answer) for a in answers)
    assert sorted(getattr(a.replies[0].data, "cached", None) for a in answers
                  if isinstance(a, Answer)) == [False, True, True, True]
    for request, events in zip(requests, emitted, strict=True):
        assert len(running_statuses(events)) == 1
        assert (await ledger.claim_now(request.key)).verdict == "done"


async def test_a_failing_handler_raises_and_frees_the_question_for_the_next(
        guard: Guard, redis: aioredis.Redis, keys: Keys) -> None:
    failing = CountingHandler(fail=TransientFailure("provider 502"))
    with pytest.raises(TransientFailure):
        await run_admitted(failing, make_request([]), DEPS, guard)
    assert not [k async for k in redis.scan_iter(match=f"{keys.prefix}*flight*")], (
        "the single-flight claim is ended, so followers do not wait for a dead leader")
    working = CountingHandler()
    answer = await run_admitted(working, make_request([]), DEPS, guard)
    assert isinstance(answer, Answer) and working.calls == 1


async def test_without_a_ledger_claim_nothing_is_recorded(guard: Guard,
                                                           ledger: JobLedger) -> None:
    """Cache warming runs requests that claim no job: the ledger keeps no record of them."""
    request = make_request([])
    unclaimed = Request(envelope=request.envelope, data=request.data,
                        principal=request.principal, attempt=0, emit=request.emit)
    answer = await run_admitted(CountingHandler(), unclaimed, DEPS, guard)
    assert isinstance(answer, Answer)
    assert (await ledger.claim_now(request.key)).verdict == "claimed", "no `done` record"
    assert orjson.loads(answer.events[0].model_dump_json())["type"] == catalog.CONTENT_GENERATED
