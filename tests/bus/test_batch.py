"""Batch delivery over the real broker and Redis, against the fake OpenAI Batch API over HTTP:
a batch's life (submitted, polled, completed, each result published once, cost at the batch
price), failed and expired batches, a per-line error, cancel, a restart while a batch is open,
and callers kept apart."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis

from llm_consumer.client import build_request
from llm_consumer.events import catalog
from llm_consumer.metrics import REGISTRY
from llm_consumer.store.keys import Keys
from llm_consumer.store.usage import read_usage, today
from tests.bus.test_tracing import spans, trace_id_of, traceparent
from tests.conftest import REDIS_URL, Service, token
from tests.fakes.openai_server import (
    ErrorReply,
    FakeOpenAI,
    context_length_exceeded,
    reply,
    server_error,
)
from tests.hub import Tap, publish_raw, tap

PRICE = {"prompt": 0.002, "completion": 0.008}  # USD per 1,000 tokens
FAST = {"batch_window_s": 0.3, "batch_poll_s": 0.2, "prices": {"gpt-5-nano": PRICE}}
__all__ = ["spans"]  # the span recorder fixture, so batch results carry the request's trace
CONTEXT = {"context": {"name": "Mira Thornvale", "class": "Rogue"},
           "theme": {"preset": "dark-fantasy"}}


def batch_request(kind: str = "character.backstory", data: dict[str, Any] | None = None,
                  request_id: str | None = None) -> dict[str, Any]:
    return build_request(kind, {**(data or CONTEXT), "options": {"delivery": "batch"}},
                         request_id=request_id)


async def send(service: Service, envelope: dict[str, Any], *, subject: str = "alice",
               reply_to: str | None = None, priority: int | None = None) -> None:
    await publish_raw(service.settings, orjson.dumps(envelope),
                      routing_key=envelope["type"], reply_to=reply_to, priority=priority,
                      headers={"authorization": f"Bearer {token('llm:content', subject=subject)}"})


async def cancel(service: Service, request_id: str, *, subject: str,
                 owner: str | None = None) -> None:
    event = build_request("x", {})
    event.update(type="job.cancel", data={"request_id": request_id,
                                          **({"subject": owner} if owner else {})})
    await publish_raw(service.settings, orjson.dumps(event), routing_key="job.cancel",
                      headers={"authorization": f"Bearer {token('llm:content', subject=subject)}"})


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def states(hub: Tap, request_id: str) -> list[str]:
    return [e["data"]["state"] for e in hub.of_type(catalog.JOB_STATUS, request_id)]


def paths(server: FakeOpenAI, method: str = "POST") -> list[str]:
    return [r.path for r in server.requests if r.method == method]


async def until(check: Any, timeout_s: float = 30) -> None:
    async def wait() -> None:
        while not check():
            await asyncio.sleep(0.05)
    await asyncio.wait_for(wait(), timeout_s)


async def test_a_batch_life_end_to_end(openai_service: Any, fake_openai: FakeOpenAI) -> None:
    service: Service = await openai_service(**FAST, batch_max_requests=3,
                                            heartbeat_every_s=0.5)
    published_before = metric("llm_batch_results_total", outcome="published")
    requests = [batch_request("character.backstory"), batch_request("world.location"),
                batch_request("content.validate", {"context": {"content": {"name": "Mira"}}})]
    async with tap(service.settings) as hub, tap(service.settings, binding=None) as mine:
        for request in requests:
            await send(service, request, reply_to=mine.queue_name)
        for request in requests:
            await hub.wait_for(catalog.JOB_STATUS, request["id"], count=3)  # ..., completed
        results = {r["id"]: await hub.wait_for(
            catalog.VALIDATION_COMPLETED if r["data"]["kind"] == "content.validate"
            else catalog.CONTENT_GENERATED, r["id"]) for r in requests}
        await mine.wait_for(catalog.VALIDATION_COMPLETED, requests[2]["id"])
        await asyncio.sleep(1.0)  # polls go on: nothing is published twice
        for request in requests:
            assert states(hub, request["id"]) == ["running", "batched", "completed"]
            assert len(results[request["id"]]) == 1
        # the re-sent request gets the stored answer: no new batch, no provider call
        await send(service, requests[0], reply_to=mine.queue_name)
        again = await mine.wait_for(catalog.CONTENT_GENERATED, requests[0]["id"], count=2)
        beats = len(hub.of_type(catalog.SERVICE_HEARTBEAT))
        [*_, beat] = await hub.wait_for(catalog.SERVICE_HEARTBEAT, count=beats + 1)
    # a batched request is no error for the heartbeat's error rate
    assert beat["data"]["metrics"]["processed"] == 4
    assert beat["data"]["metrics"]["error_rate"] == 0
    assert again[1]["data"] == again[0]["data"]
    assert fake_openai.chat_requests == []  # every answer came through the batch
    assert paths(fake_openai).count("/v1/files") == 1
    assert paths(fake_openai).count("/v1/batches") == 1
    [batch] = fake_openai.batches.values()
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    upload = next(f for f in fake_openai.files.values() if f.purpose == "batch")
    lines = [orjson.loads(line) for line in upload.content.splitlines()]
    assert {line["url"] for line in lines} == {"/v1/chat/completions"}
    assert all(line["body"]["response_format"]["type"] == "json_schema" for line in lines)
    # each reply queue hears its own request's events
    assert {e["data"]["request_id"] for e in mine.events} == {r["id"] for r in requests}
    # usage: the provider's tokens at half the price
    usage = [results[r["id"]][0]["data"]["token_usage"] for r in requests]
    expected = sum(u["prompt_tokens"] * PRICE["prompt"] + u["completion_tokens"]
                   * PRICE["completion"] for u in usage) / 1000 * 0.5
    client = aioredis.from_url(REDIS_URL)
    try:
        rows = await read_usage(client, Keys(service.settings.redis_prefix), [today()])
    finally:
        await client.aclose()
    assert sum(row.requests for row in rows) == 3
    assert abs(sum(row.cost_usd for row in rows) - expected) < 1e-9
    assert {row.user for row in rows} == {"alice"}
    assert metric("llm_batch_results_total", outcome="published") - published_before == 3
    for request in requests:  # the life of each, printed with -s
        print(f"{request['data']['kind']:20} job.status {' -> '.join(states(hub, request['id']))}")
    print(f"batch {batch['id']}: {batch['request_counts']}, tokens "
          f"{sum(u['total_tokens'] for u in usage)}, cost ${sum(r.cost_usd for r in rows):.6f} "
          f"(realtime ${expected * 2:.6f})")


async def test_a_failed_and_an_expired_batch(openai_service: Any,
                                             fake_openai: FakeOpenAI) -> None:
    service: Service = await openai_service(**FAST)
    async with tap(service.settings) as hub:
        fake_openai.batch_ending = "failed"
        refused = batch_request()
        await send(service, refused)
        [failed] = await hub.wait_for(catalog.GENERATION_FAILED, refused["id"])
        fake_openai.batch_ending = "expired"
        late = batch_request()
        await send(service, late)
        [expired] = await hub.wait_for(catalog.GENERATION_FAILED, late["id"])
        assert states(hub, late["id"]) == ["running", "batched", "failed"]
        # an expired request is retryable: sent again, it is batched again (not the failure)
        fake_openai.batch_ending = "completed"
        await send(service, late)
        await hub.wait_for(catalog.CONTENT_GENERATED, late["id"])
    assert failed["data"]["error"]["code"] == "invalid_request"
    assert failed["data"]["error"]["retryable"] is False
    assert "refused the batch" in failed["data"]["error"]["message"]
    assert expired["data"]["error"]["code"] == "timeout"
    assert expired["data"]["error"]["retryable"] is True
    assert "expired" in expired["data"]["error"]["message"]
    assert [b["status"] for b in fake_openai.batches.values()] == ["failed", "expired",
                                                                   "completed"]


async def test_per_line_errors(openai_service: Any, fake_openai: FakeOpenAI) -> None:
    service: Service = await openai_service(**FAST, batch_max_requests=3)

    def answer(body: dict[str, Any]) -> Any:
        prompt = str(body["messages"])
        if "Too-Long" in prompt:
            return context_length_exceeded()
        if "Sorry" in prompt:
            return reply("I'm sorry, I cannot help with that.")
        return None

    fake_openai.responder = answer
    named = {name: batch_request(data={"context": {"name": name}})
             for name in ("Too-Long", "Sorry", "Fine")}
    async with tap(service.settings) as hub:
        for request in named.values():
            await send(service, request)
        [too_long] = await hub.wait_for(catalog.GENERATION_FAILED, named["Too-Long"]["id"])
        [sorry] = await hub.wait_for(catalog.GENERATION_FAILED, named["Sorry"]["id"])
        [fine] = await hub.wait_for(catalog.CONTENT_GENERATED, named["Fine"]["id"])
    assert too_long["data"]["error"]["code"] == "context_length_exceeded"
    assert sorry["data"]["error"]["code"] == "internal"
    assert "the model refused" in sorry["data"]["error"]["message"]
    assert fine["data"]["model_used"] == "gpt-5-nano"
    assert len(fake_openai.batches) == 1


async def test_cancel_and_callers_apart(openai_service: Any, fake_openai: FakeOpenAI) -> None:
    service: Service = await openai_service(**FAST, batch_max_requests=3)
    fake_openai.batch_ending = "hold"
    shared_id = str(uuid.uuid4())
    mine, kept = batch_request(), batch_request(request_id=shared_id)
    theirs = batch_request(request_id=shared_id)  # the same id from another caller
    async with (tap(service.settings) as hub, tap(service.settings, binding=None) as alice_q,
                tap(service.settings, binding=None) as bob_q):
        await send(service, mine, reply_to=alice_q.queue_name)
        await send(service, kept, reply_to=alice_q.queue_name)
        await send(service, theirs, subject="bob", reply_to=bob_q.queue_name)
        await until(lambda: len(hub.of_type(catalog.JOB_STATUS)) >= 6)  # running, batched x3
        await until(lambda: any(b["status"] == "in_progress"
                                for b in fake_openai.batches.values()))
        await cancel(service, shared_id, subject="bob", owner="alice")  # not bob's to cancel
        await cancel(service, mine["id"], subject="alice")
        await cancel(service, shared_id, subject="bob")  # bob's own, not alice's
        [cancelled] = await alice_q.wait_for(catalog.GENERATION_FAILED, mine["id"])
        await bob_q.wait_for(catalog.GENERATION_FAILED, shared_id)
        fake_openai.batch_ending = "completed"
        [kept_result] = await alice_q.wait_for(catalog.CONTENT_GENERATED, shared_id)
        await hub.wait_for(catalog.JOB_STATUS, mine["id"], count=3)
        await asyncio.sleep(1.0)  # the batch is done: nothing more comes
    assert cancelled["data"]["error"]["code"] == "cancelled"
    assert states(hub, mine["id"]) == ["running", "batched", "cancelled"]
    assert hub.of_type(catalog.CONTENT_GENERATED, mine["id"]) == []  # dropped
    assert len(hub.of_type(catalog.CONTENT_GENERATED, shared_id)) == 1  # alice's only
    assert kept_result["data"]["request_id"] == shared_id
    assert bob_q.of_type(catalog.CONTENT_GENERATED) == []
    [forbidden] = [e for e in hub.of_type(catalog.GENERATION_FAILED)
                   if e["data"]["request_type"] == "job.cancel"]
    assert forbidden["data"]["error"]["code"] == "forbidden"
    assert [e["data"]["error"]["code"] for e in bob_q.of_type(catalog.GENERATION_FAILED)
            ] == ["cancelled"]


async def test_a_batch_whose_requests_are_all_cancelled_is_cancelled(
        openai_service: Any, fake_openai: FakeOpenAI) -> None:
    service: Service = await openai_service(**FAST)
    fake_openai.batch_ending = "hold"
    request = batch_request()
    async with tap(service.settings) as hub:
        await send(service, request)
        await until(lambda: any(b["status"] == "in_progress"
                                for b in fake_openai.batches.values()))
        await cancel(service, request["id"], subject="alice")
        await hub.wait_for(catalog.GENERATION_FAILED, request["id"])
        await until(lambda: [b["status"] for b in fake_openai.batches.values()]
                    == ["cancelled"])
        await asyncio.sleep(0.6)
    [batch_id] = fake_openai.batches
    assert f"/v1/batches/{batch_id}/cancel" in paths(fake_openai)
    assert len(hub.of_type(catalog.GENERATION_FAILED, request["id"])) == 1
    assert hub.of_type(catalog.CONTENT_GENERATED) == []


async def test_a_restart_while_a_batch_is_open(openai_service: Any,
                                               fake_openai: FakeOpenAI) -> None:
    first: Service = await openai_service(**FAST, batch_max_requests=2)
    fake_openai.batch_ending = "hold"
    requests = [batch_request(), batch_request("world.npc_dialogue")]
    async with tap(first.settings) as hub:
        for request in requests:
            await send(first, request)
        await until(lambda: any(b["status"] == "in_progress"
                                for b in fake_openai.batches.values()))
        await send(first, requests[0])  # re-sent while batched: told so, not batched twice
        await hub.wait_for(catalog.JOB_STATUS, requests[0]["id"], count=3)
        await first.close()  # the batch is open at the provider, its state in Redis
        fake_openai.batch_ending = "completed"
        second = Service(first.settings.model_copy(update={"instance_id": "test-restarted"}))
        await second.start()
        try:
            for request in requests:
                await hub.wait_for(catalog.CONTENT_GENERATED, request["id"])
            await asyncio.sleep(1.0)
        finally:
            await second.close()
    for request in requests:
        assert len(hub.of_type(catalog.CONTENT_GENERATED, request["id"])) == 1
    assert states(hub, requests[0]["id"]) == ["running", "batched", "batched", "completed"]
    assert states(hub, requests[1]["id"]) == ["running", "batched", "completed"]
    assert len(fake_openai.batches) == 1
    assert fake_openai.chat_requests == []


async def test_two_replicas_share_the_batches(openai_service: Any, fake_openai: FakeOpenAI,
                                              spans: Any) -> None:
    first: Service = await openai_service(**FAST, batch_max_requests=4)
    second = Service(first.settings.model_copy(update={"instance_id": "test-replica-2"}))
    await second.start()
    trace_id, parent = traceparent()
    try:
        requests = [batch_request() for _ in range(4)]
        requests[0]["traceparent"] = parent
        async with tap(first.settings) as hub:
            for request in requests:
                await send(first, request)
            for request in requests:
                await hub.wait_for(catalog.CONTENT_GENERATED, request["id"])
            await asyncio.sleep(1.0)
    finally:
        await second.close()
    for request in requests:
        assert len(hub.of_type(catalog.CONTENT_GENERATED, request["id"])) == 1
        assert states(hub, request["id"]) == ["running", "batched", "completed"]
    assert len(fake_openai.batches) == 1
    assert paths(fake_openai).count("/v1/files") == 1
    [result] = hub.of_type(catalog.CONTENT_GENERATED, requests[0]["id"])
    assert trace_id_of(result["traceparent"]) == trace_id  # the request's own trace


async def test_an_upload_refused_and_one_retried(openai_service: Any,
                                                 fake_openai: FakeOpenAI) -> None:
    service: Service = await openai_service(**FAST)
    fake_openai.upload_errors.extend([
        ErrorReply(400, "File is too large.", "invalid_request_error"),
        server_error(503), server_error(503)])
    async with tap(service.settings) as hub:
        refused = batch_request()
        await send(service, refused)
        [failed] = await hub.wait_for(catalog.GENERATION_FAILED, refused["id"])
        retried = batch_request()
        await send(service, retried)  # two 503s, then the upload goes through
        await hub.wait_for(catalog.CONTENT_GENERATED, retried["id"])
    assert failed["data"]["error"]["code"] == "invalid_request"
    assert "File is too large" in failed["data"]["error"]["message"]
    assert paths(fake_openai).count("/v1/files") == 4
    assert len(fake_openai.batches) == 1


async def test_an_input_file_is_bounded_in_bytes(openai_service: Any,
                                                 fake_openai: FakeOpenAI) -> None:
    service: Service = await openai_service(**{**FAST, "batch_window_s": 1.0},
                                            batch_max_bytes=10_000)
    big = {"context": {"text": "The knight rode into town. " * 250}}  # about 7 KB a line
    requests = [batch_request("theme.apply", big) for _ in range(3)]
    async with tap(service.settings) as hub:
        for request in requests:
            await send(service, request)
        for request in requests:
            await hub.wait_for(catalog.CONTENT_GENERATED, request["id"])
    uploads = [f for f in fake_openai.files.values() if f.purpose == "batch"]
    assert len(uploads) == 3  # one line each: two would pass 10,000 bytes
    assert all(7_000 < len(f.content) <= 10_000 for f in uploads)


async def test_priority_zero_goes_to_batch_when_set(openai_service: Any,
                                                    fake_openai: FakeOpenAI) -> None:
    service: Service = await openai_service(**FAST, batch_priority_zero=True)
    def named(name: str) -> dict[str, Any]:  # distinct: no cache or single-flight sharing
        return {"context": {"name": name, "class": "Rogue"}}

    idle = build_request("character.backstory", named("Idle"))
    urgent = build_request("character.backstory", named("Urgent"))
    insists = build_request("character.backstory",
                            {**named("Insists"), "options": {"delivery": "realtime"}})
    async with tap(service.settings) as hub:
        await send(service, idle, priority=0)
        await send(service, urgent, priority=5)
        await send(service, insists, priority=0)
        for request in (idle, urgent, insists):
            await hub.wait_for(catalog.CONTENT_GENERATED, request["id"])
    assert states(hub, idle["id"]) == ["running", "batched", "completed"]
    assert states(hub, urgent["id"]) == ["running", "completed"]
    assert states(hub, insists["id"]) == ["running", "completed"]
    assert len(fake_openai.chat_requests) == 2  # the two realtime ones
    assert len(fake_openai.batches) == 1
