"""Queue status and re-prioritizing (queue.status, job.prioritize) over the real broker and
Redis: a request behind 200 others moves ahead and runs once with one result; callers see and
move only their own requests; llm:admin sees everyone's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aio_pika
import orjson
import redis.asyncio as aioredis

from llm_consumer import metrics
from llm_consumer.bus.queue_index import ask
from llm_consumer.client import build_request
from llm_consumer.events import catalog
from llm_consumer.events.queue import JobPrioritized, QueueStatusReported
from llm_consumer.settings import Settings
from tests.cli.test_dlq import cli_env
from tests.cli.test_inject import run_cli
from tests.conftest import ALL_SCOPES, HUB_URL, SECRET, Service, token
from tests.fakes.openai_server import Reply
from tests.hub import publish_raw, tap

NO_LIMITS: dict[str, Any] = {
    "rate_limit_global": "off", "rate_limit_user": "off", "rate_limit_text": "off",
    "rate_limit_models": {}, "rate_limit_user_share": 1.0}
SOURCE = "/llm-consumer-cli"  # build_request's default source


async def publish_all(settings: Settings, requests: list[dict[str, Any]], bearer: str,
                      priority: int) -> None:
    """Publish requests as a peer would, on one confirmed channel."""
    async with await aio_pika.connect(HUB_URL) as connection:
        channel = await connection.channel(publisher_confirms=True)
        hub = await channel.get_exchange(settings.hub_exchange)
        for request in requests:
            await hub.publish(aio_pika.Message(
                body=orjson.dumps(request), headers={"authorization": f"Bearer {bearer}"},
                message_id=request["id"], priority=priority), routing_key=request["type"])


async def status(settings: Settings, bearer: str, request_id: str | None = None,
                 **extra: str) -> QueueStatusReported:
    data: dict[str, Any] = {"request_id": request_id, **extra} if request_id else dict(extra)
    event = await ask([HUB_URL], settings.hub_exchange, catalog.QUEUE_STATUS, data,
                      token=bearer, timeout_s=10)
    assert event["type"] == catalog.QUEUE_STATUS_REPORTED, event
    return QueueStatusReported.model_validate(event["data"])


async def status_until(settings: Settings, bearer: str, ready: Callable[[QueueStatusReported],
                       bool], request_id: str | None = None) -> QueueStatusReported:
    """Ask again until the answer is `ready` (the index reads its copies asynchronously)."""
    async with asyncio.timeout(30):
        while not ready(answer := await status(settings, bearer, request_id)):
            await asyncio.sleep(0.1)
    return answer


async def prioritize(settings: Settings, bearer: str, request_id: str, priority: int,
                     **extra: str) -> dict[str, Any]:
    return await ask([HUB_URL], settings.hub_exchange, catalog.JOB_PRIORITIZE,
                     {"request_id": request_id, "priority": priority, **extra},
                     token=bearer, timeout_s=10)


def superseded() -> float:
    return metrics.REQUESTS.labels("world.location", "superseded")._value.get()


def mentions(fake_openai: Any, name: str) -> int:
    return sum(name in json.dumps(r.body) for r in fake_openai.chat_requests)


async def test_a_request_behind_200_moves_ahead_and_runs_once(openai_service: Any,
                                                               fake_openai: Any) -> None:
    fake_openai.responder = lambda body: Reply(None, delay_s=0.05)
    service: Service = await openai_service(concurrency=1, heartbeat_every_s=0.5, **NO_LIMITS)
    settings = service.settings
    alice = token("llm:content", subject="alice")
    crowd = [build_request("world.location", {"context": {"name": f"crowd-{i}"},
                                              "cache": False}) for i in range(200)]
    target = build_request("world.location", {"context": {"name": "Target-Tamsin"},
                                               "cache": False})
    skipped_before = superseded()
    async with tap(settings, "#") as hub:
        await publish_all(settings, [*crowd, target], alice, priority=0)
        before = await status_until(settings, alice, lambda s: s.request is not None
                                    and s.request.state == "queued", target["id"])
        answer = await prioritize(settings, alice, target["id"], 9)
        after = await status(settings, alice, target["id"])
        await hub.wait_for(catalog.CONTENT_GENERATED, target["id"], timeout_s=60)
        await hub.wait_for(catalog.CONTENT_GENERATED, count=201, timeout_s=180)
        async with asyncio.timeout(30):  # the old copy, delivered last, is skipped
            while superseded() < skipped_before + 1:
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    print(f"\nbefore: {before.request}\nprioritized: {answer['data']}\nafter: {after.request}")
    assert before.request is not None and before.request.position is not None
    assert before.request.position >= 150, before.request  # most of the 200 still ahead
    assert before.request.ahead_in_higher == 0 and before.request.priority == 0
    moved = JobPrioritized.model_validate(answer["data"])
    assert (moved.outcome, moved.previous_priority, moved.position) == ("accepted", 0, 0)
    assert after.request is not None
    assert after.request.state in ("queued", "running", "completed"), after.request
    if after.request.state == "queued":
        assert (after.request.priority, after.request.position) == (9, 0)
    order = [e["data"]["request_id"] for e in hub.of_type(catalog.CONTENT_GENERATED)]
    served_at = order.index(target["id"])
    print(f"served after {served_at} of the 200; {len(order)} results")
    assert served_at < 20, f"served at position {served_at}"
    assert order.count(target["id"]) == 1  # one result
    assert not hub.of_type(catalog.GENERATION_FAILED, target["id"])
    assert mentions(fake_openai, "Target-Tamsin") == 1  # one provider call
    assert superseded() == skipped_before + 1
    drained = await status_until(settings, alice, lambda s: s.queued == 0, target["id"])
    assert drained.request is not None and drained.request.state == "completed"


async def evalsha_calls(settings: Settings) -> int:
    async with aioredis.from_url(settings.redis_url) as redis:
        found = await redis.info("commandstats")
    return int(found.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_copies_arriving_together_are_indexed_in_a_few_script_calls(
        openai_service: Any, fake_openai: Any) -> None:
    fake_openai.responder = lambda body: Reply(None, delay_s=120)  # the first one holds the worker
    service: Service = await openai_service(concurrency=1, heartbeat_every_s=0.5,
                                            shutdown_grace_s=0.5, **NO_LIMITS)
    settings = service.settings
    alice = token("llm:content", subject="alice")
    burst = [build_request("world.location", {"context": {"name": f"burst-{i}"},
                                              "cache": False}) for i in range(300)]
    async with tap(settings, catalog.JOB_STATUS) as hub:
        await publish_all(settings, burst[:1], alice, priority=0)
        await hub.wait_for(catalog.JOB_STATUS, burst[0]["id"])  # running: the worker is busy
    calls_before = await evalsha_calls(settings)
    async with await aio_pika.connect(HUB_URL) as connection:  # as many peers do: at once
        channel = await connection.channel(publisher_confirms=True)
        hub_exchange = await channel.get_exchange(settings.hub_exchange)
        await asyncio.gather(*(hub_exchange.publish(aio_pika.Message(
            body=orjson.dumps(request), headers={"authorization": f"Bearer {alice}"},
            message_id=request["id"]), routing_key=request["type"]) for request in burst[1:]))
    queued = await status_until(settings, alice, lambda s: s.queued == 299 and s.in_flight == 1)
    calls = await evalsha_calls(settings) - calls_before

    print(f"\n299 index copies written in {calls} script calls")
    assert [(b.priority, b.queued) for b in queued.bands] == [(0, 299)]
    assert calls < 250, calls  # one call per copy: 299 and more (status questions count too)


async def test_callers_see_and_move_only_their_own_requests(openai_service: Any,
                                                            fake_openai: Any) -> None:
    fake_openai.responder = lambda body: Reply(
        None, delay_s=120 if "Blocker" in json.dumps(body) else 0)
    service: Service = await openai_service(concurrency=1, heartbeat_every_s=0.5,
                                            shutdown_grace_s=0.5, **NO_LIMITS)
    settings = service.settings
    alice = token("llm:content", subject="alice")
    bob = token("llm:content", subject="bob")
    admin = token(*ALL_SCOPES, subject="ops")

    def requests(name: str, count: int) -> list[dict[str, Any]]:
        return [build_request("world.location", {"context": {"name": f"{name}-{i}"},
                                                 "cache": False}) for i in range(count)]

    blocker = requests("Blocker", 1)
    alice_low, alice_high, bob_low = requests("alice", 3), requests("alice", 2), requests("bob", 4)
    async with tap(settings, catalog.JOB_STATUS) as hub:
        await publish_all(settings, blocker, token("llm:content", subject="carol"), priority=0)
        await hub.wait_for(catalog.JOB_STATUS, blocker[0]["id"])  # it runs: the worker is busy
    # two the worker will refuse (a model not offered, a reply_to it does not answer into):
    # the broker holds them, the index does not count them
    unlisted = build_request("world.location", {"context": {"name": "x"},
                                                "model": {"name": "gpt-unlisted"}})
    await publish_all(settings, [unlisted], alice, priority=0)
    await publish_raw(settings, orjson.dumps(requests("alice", 1)[0]),
                      routing_key=catalog.CONTENT_REQUESTED,
                      headers={"authorization": f"Bearer {alice}"},
                      reply_to=settings.queue_prefix + "dead")
    await publish_all(settings, alice_low, alice, priority=0)
    await publish_all(settings, bob_low, bob, priority=0)
    await publish_all(settings, alice_high, alice, priority=5)
    everyone = await status_until(settings, admin, lambda s: s.queued == 9 and s.in_flight == 1)

    assert everyone.scope == "all"
    assert [(b.priority, b.queued) for b in everyone.bands] == [(5, 2), (0, 7)]
    assert everyone.in_flight_by_instance == {settings.instance_id: 1}
    assert everyone.broker.work_queue == 11 and everyone.broker.dead_letters == 0
    mine = await status(settings, alice, alice_low[2]["id"])
    assert (mine.scope, mine.queued) == ("own", 5)
    assert [(b.priority, b.queued) for b in mine.bands] == [(5, 2), (0, 3)]
    assert mine.in_flight == 1 and mine.in_flight_by_instance == {}
    assert mine.request is not None and mine.request.state == "queued"
    # behind both of alice's priority-5 requests, and every earlier priority-0 one (hers)
    assert (mine.request.ahead_in_higher, mine.request.ahead_in_band) == (2, 2)
    carol = await status(settings, token("llm:content", subject="carol"), blocker[0]["id"])
    assert carol.request is not None
    assert (carol.request.state, carol.request.attempt) == ("running", 0)
    theirs = await status(settings, bob)
    assert [(b.priority, b.queued) for b in theirs.bands] == [(0, 4)]

    # bob names alice's request: it is not his, so it is not there for him
    peek = await status(settings, bob, alice_low[2]["id"])
    assert peek.request is not None and peek.request.state == "unknown"
    assert peek.request.position is None and peek.queued == 4
    refused = await prioritize(settings, bob, alice_low[2]["id"], 9)
    assert refused["data"]["outcome"] == "not_found"
    forbidden = await prioritize(settings, bob, alice_low[2]["id"], 9, subject="alice")
    assert forbidden["type"] == catalog.GENERATION_FAILED
    assert forbidden["data"]["error"]["code"] == "forbidden"
    spied = await ask([HUB_URL], settings.hub_exchange, catalog.QUEUE_STATUS,
                      {"request_id": alice_low[2]["id"], "subject": "alice"},
                      token=bob, timeout_s=10)
    assert spied["type"] == catalog.GENERATION_FAILED
    unmoved = await status(settings, alice, alice_low[2]["id"])
    assert [(b.priority, b.queued) for b in unmoved.bands] == [(5, 2), (0, 3)]
    assert unmoved.request is not None and unmoved.request.priority == 0

    # the CLI asks as llm:admin (a token minted from SECRET_KEY) and prints JSON Lines
    env = cli_env(settings) | {"SECRET_KEY": SECRET}
    code, stdout, stderr = await run_cli(env, "queue", "status", "--json")
    assert code == 0, stderr
    shown = orjson.loads(stdout.splitlines()[-1])["data"]
    assert shown["scope"] == "all" and shown["queued"] == 9
    code, _, stderr = await run_cli(env, "queue", "prioritize",
                                    alice_low[2]["id"], "9")
    assert code == 1 and "not_found" in stderr  # the CLI's own source and subject: not hers
    code, stdout, stderr = await run_cli(env, "queue", "prioritize",
                                         alice_low[2]["id"], "9", "--subject", "alice")
    assert code == 0, stderr
    assert "priority 0 -> 9, position now 0" in " ".join(stdout.split())
    code, stdout, stderr = await run_cli(env, "queue", "status", "--request-id",
                                         alice_low[2]["id"], "--token", alice)
    assert code == 0, stderr
    print(f"\n$ llm-consumer queue status --request-id {alice_low[2]['id']} --token $ALICE\n"
          f"{stdout}")
    shown_text = " ".join(stdout.split())
    assert "queued, your requests: 5" in shown_text
    assert f"{alice_low[2]['id']}: queued, position 0" in shown_text
    moved = await status(settings, admin)
    assert [(b.priority, b.queued) for b in moved.bands] == [(9, 1), (5, 2), (0, 6)]
    assert moved.broker.work_queue == 12  # the broker holds the new copy and the old one


def controls_settled() -> float:
    return metrics.REQUESTS.labels("none", "control")._value.get()


async def test_two_replicas_answer_each_control_event_once(openai_service: Any,
                                                           fake_openai: Any) -> None:
    fake_openai.responder = lambda body: Reply(
        None, delay_s=120 if "Blocker" in json.dumps(body) else 0)
    first: Service = await openai_service(concurrency=1, heartbeat_every_s=0.5,
                                          shutdown_grace_s=0.5, **NO_LIMITS)
    settings = first.settings
    second = Service(settings.model_copy(update={"instance_id": settings.instance_id + "-b"}))
    await second.start()
    try:
        alice = token("llm:content", subject="alice")
        blockers = [build_request("world.location", {"context": {"name": f"Blocker-{i}"},
                                                     "cache": False}) for i in range(2)]
        queued = [build_request("world.location", {"context": {"name": f"alice-{i}"},
                                                   "cache": False}) for i in range(3)]
        await publish_all(settings, blockers, token("llm:content", subject="carol"), 0)
        await publish_all(settings, queued, alice, 0)
        admin = token(*ALL_SCOPES, subject="ops")
        both_busy = await status_until(settings, admin,
                                       lambda s: s.queued == 3 and s.in_flight == 2)
        assert set(both_busy.in_flight_by_instance) == {settings.instance_id,
                                                        second.settings.instance_id}
        async with tap(settings, "#") as hub:
            settled = controls_settled()
            answer = await prioritize(settings, alice, queued[2]["id"], 9)
            asked = await status(settings, alice, queued[2]["id"])
            async with asyncio.timeout(30):  # each replica has settled both control events
                while controls_settled() < settled + 4:
                    await asyncio.sleep(0.05)
            await hub.wait_for(catalog.JOB_PRIORITIZED, queued[2]["id"])
            await hub.wait_for(catalog.QUEUE_STATUS_REPORTED)
            await asyncio.sleep(0.3)  # room for a second answer, were there one
        assert answer["data"]["outcome"] == "accepted"
        assert asked.request is not None and asked.request.position == 0
        assert len(hub.of_type(catalog.JOB_PRIORITIZED, queued[2]["id"])) == 1
        assert len(hub.of_type(catalog.QUEUE_STATUS_REPORTED)) == 1
    finally:
        await second.close()
