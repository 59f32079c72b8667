"""Response cache and single-flight end to end: the real service (one replica or three) on the
real broker and Redis, the real OpenAI SDK against the fake server, which counts what is paid."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

from llm_consumer.client import build_request
from llm_consumer.events import catalog
from llm_consumer.store.keys import Keys
from tests.conftest import REDIS_URL, Service, token
from tests.fakes.openai_server import content_policy, reply
from tests.hub import publish_raw, tap

SHEET = {"context": {"name": "Mira Thornvale", "race": "Half-Elf", "class": "Rogue"},
         "theme": {"preset": "dark-fantasy"}}


async def replicas(start: Callable[..., Awaitable[Service]], count: int,
                   **overrides: Any) -> list[Service]:
    """`count` services sharing one hub, queues and Redis prefix: replicas of one deployment."""
    first = await start(**overrides)
    shared = {"hub_exchange": first.settings.hub_exchange,
              "queue_prefix": first.settings.queue_prefix,
              "redis_prefix": first.settings.redis_prefix}
    rest = [await start(**overrides, **shared, instance_id=f"replica-{uuid.uuid4().hex[:6]}")
            for _ in range(count - 1)]
    return [first, *rest]


def result_of(exchange: Any) -> dict[str, Any]:
    assert exchange.final is not None and exchange.final["type"] == catalog.CONTENT_GENERATED, (
        exchange.final)
    data: dict[str, Any] = exchange.final["data"]
    return data


async def invalidate(service: Service, kind: str | None = None) -> None:
    """Publish `cache.invalidate` as ops would and wait until the service applied it."""
    event = build_request("x", {})
    event.update(type="cache.invalidate", data={"kind": kind} if kind else {})
    client = aioredis.from_url(REDIS_URL)
    generations = Keys(service.settings.redis_prefix).cache_generations()
    field = kind or "*"
    before = int(await client.hget(generations, field) or 0)
    await publish_raw(service.settings, orjson.dumps(event), routing_key="cache.invalidate",
                      headers={"authorization": f"Bearer {token('llm:admin')}"})
    while int(await client.hget(generations, field) or 0) == before:
        await asyncio.sleep(0.05)
    await client.aclose()


async def test_hit_miss_and_bypass(openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service()
    first = result_of(await service.request("character.backstory", SHEET))
    second_exchange = await service.request("character.backstory", SHEET)
    second = result_of(second_exchange)
    assert len(fake_openai.chat_requests) == 1, "the second request was not paid for"
    assert first["cached"] is False and second["cached"] is True
    assert second["request_id"] == second_exchange.request["id"] != first["request_id"]
    assert second["content"] == first["content"] and second["model_used"] == first["model_used"]
    assert second["duration_ms"] < 5000

    fresh = result_of(await service.request("character.backstory", {**SHEET, "cache": False}))
    assert fresh["cached"] is False and len(fake_openai.chat_requests) == 2
    assert result_of(await service.request("character.backstory", SHEET))["cached"] is True
    assert len(fake_openai.chat_requests) == 2

    other = {**SHEET, "theme": {"preset": "gothic-horror"}}
    assert result_of(await service.request("character.backstory", other))["cached"] is False
    assert result_of(await service.request("world.location", SHEET))["cached"] is False
    explicit = {**SHEET, "model": {"name": "gpt-5-nano"}}
    assert result_of(await service.request("character.backstory", explicit))["cached"] is True, (
        "naming the default model is the same request")
    assert len(fake_openai.chat_requests) == 4


async def test_a_hit_tells_the_hub_completed_without_running(
        openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service()
    async with tap(service.settings) as hub:
        miss = (await service.request("campaign.quest", SHEET)).request["id"]
        hit = (await service.request("campaign.quest", SHEET)).request["id"]
        states = {}
        for request_id, count in ((miss, 2), (hit, 1)):  # the last one: completed
            await hub.wait_for(catalog.JOB_STATUS, request_id, count=count)
            states[request_id] = [e["data"]["state"]
                                  for e in hub.of_type(catalog.JOB_STATUS, request_id)]
    assert len(fake_openai.chat_requests) == 1
    assert states[miss] == ["running", "completed"]
    assert states[hit] == ["completed"], "a hit waits on nothing: no running"


async def test_invalidate_one_kind_or_all(openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service()
    for kind in ("character.backstory", "world.location"):
        await service.request(kind, SHEET)
    await invalidate(service, "world.location")
    assert result_of(await service.request("character.backstory", SHEET))["cached"] is True
    assert result_of(await service.request("world.location", SHEET))["cached"] is False
    assert len(fake_openai.chat_requests) == 3
    await invalidate(service)
    for kind in ("character.backstory", "world.location"):
        assert result_of(await service.request(kind, SHEET))["cached"] is False
    assert len(fake_openai.chat_requests) == 5


async def test_ttl_per_kind_and_zero_turns_caching_off(openai_service: Any,
                                                       fake_openai: Any) -> None:
    service: Service = await openai_service(cache_ttls={"world.location": 0,
                                                        "character.backstory": 1})
    for _ in range(2):
        assert result_of(await service.request("world.location", SHEET))["cached"] is False
    await service.request("character.backstory", SHEET)
    assert result_of(await service.request("character.backstory", SHEET))["cached"] is True
    await asyncio.sleep(1.1)
    assert result_of(await service.request("character.backstory", SHEET))["cached"] is False
    assert len(fake_openai.chat_requests) == 4


async def test_ten_identical_concurrent_requests_cost_one_call(openai_service: Any,
                                                               fake_openai: Any) -> None:
    service: Service = await openai_service()
    fake_openai.script(reply(None, delay_s=1.0))
    results = [result_of(r) for r in await asyncio.gather(
        *(service.request("campaign.plot", SHEET) for _ in range(10)))]
    assert len(fake_openai.chat_requests) == 1
    assert sorted(r["cached"] for r in results) == [False] + [True] * 9
    assert len({r["request_id"] for r in results}) == 10
    assert len({orjson.dumps(r["content"]) for r in results}) == 1


async def test_ten_identical_requests_on_three_replicas_cost_one_call(
        openai_service: Any, fake_openai: Any) -> None:
    services = await replicas(openai_service, 3)
    fake_openai.script(reply(None, delay_s=1.5))
    results = [result_of(r) for r in await asyncio.gather(
        *(services[i % 3].request("campaign.quest", SHEET) for i in range(10)))]
    assert len(fake_openai.chat_requests) == 1
    assert sorted(r["cached"] for r in results) == [False] + [True] * 9


async def test_a_failed_leader_lets_its_followers_go_their_own_way(openai_service: Any,
                                                                   fake_openai: Any) -> None:
    service: Service = await openai_service()
    fake_openai.script(content_policy(), reply(None, delay_s=0.5))
    exchanges = await asyncio.gather(*(service.request("world.npc_dialogue", SHEET)
                                       for _ in range(4)))
    finals = sorted(e.final["type"] for e in exchanges)
    assert finals == [catalog.CONTENT_GENERATED] * 3 + [catalog.GENERATION_FAILED]
    assert len(fake_openai.chat_requests) == 2, "the next leader computes once for the rest"


async def _leave_flight_claim(service: Service, kind: str, owner: str, *,
                              owner_alive: bool) -> None:
    """A single-flight claim on `kind` + SHEET that its owner will never finish."""
    from llm_consumer.events.requests import ContentRequested
    from llm_consumer.store.cache import digest

    keys = Keys(service.settings.redis_prefix)
    data = ContentRequested.model_validate({"kind": kind, **SHEET})
    client = aioredis.from_url(REDIS_URL)
    await client.set(keys.flight(digest(catalog.CONTENT_REQUESTED, data, "gpt-5-nano")),
                     f"{owner}/admission-1", px=60_000)
    if owner_alive:
        await client.set(keys.instance(owner), "1", ex=60)
    await client.aclose()


async def test_a_live_leaders_unfinished_claim_is_waited_out_then_computed_here(
        openai_service: Any, fake_openai: Any) -> None:
    """A claim its (live) owner never finishes: the follower waits its bound, then computes."""
    service: Service = await openai_service(singleflight_wait_s=1.0)
    await _leave_flight_claim(service, "world.environment", "replica-stuck", owner_alive=True)
    result = await service.request("world.environment", SHEET, timeout_s=20)
    assert result_of(result)["cached"] is False
    assert result_of(result)["duration_ms"] >= 1000
    assert len(fake_openai.chat_requests) == 1


async def test_a_dead_leaders_claim_is_taken_over_at_once(openai_service: Any,
                                                           fake_openai: Any) -> None:
    """A claim whose owner has no liveness key (killed): nobody waits for it."""
    service: Service = await openai_service(singleflight_wait_s=30.0)
    await _leave_flight_claim(service, "world.environment", "replica-killed", owner_alive=False)
    result = await service.request("world.environment", SHEET, timeout_s=20)
    assert result_of(result)["cached"] is False
    assert result_of(result)["duration_ms"] < 10_000
    assert len(fake_openai.chat_requests) == 1
