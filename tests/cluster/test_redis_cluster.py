"""The whole request path on a real Redis Cluster (3 masters, 3 replicas): text, cache,
single-flight, idempotency and limits across three replicas; cache stats and invalidation over
every master; a mode that does not fit the server stops start-up with one line."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from llm_consumer.app import build_guard, run_service
from llm_consumer.client import build_request
from llm_consumer.settings import Settings
from llm_consumer.store.client import RedisMisconfigured, open_redis
from tests.bus.test_cache_e2e import SHEET, replicas, result_of
from tests.bus.test_limits_e2e import most_in_any_window, sheet
from tests.cluster.redis_cluster import RedisCluster
from tests.conftest import REDIS_URL, Service, token
from tests.fakes.openai_server import reply


def on_cluster(cluster: RedisCluster, **overrides: Any) -> dict[str, Any]:
    return {"redis_mode": "cluster", "redis_url": cluster.url, **overrides}


async def test_text_cache_and_idempotency_on_the_cluster(
        openai_service: Any, fake_openai: Any, redis_cluster: RedisCluster) -> None:
    service: Service = await openai_service(**on_cluster(redis_cluster))
    first = result_of(await service.request("character.backstory", SHEET))
    second = result_of(await service.request("character.backstory", SHEET))
    assert (first["cached"], second["cached"]) == (False, True)
    assert len(fake_openai.chat_requests) == 1

    envelope = build_request("world.location", SHEET)  # one event id, delivered twice
    once = await service.send(envelope, auth=token())
    again = await service.send(envelope, auth=token())
    assert result_of(once)["content"] == result_of(again)["content"]
    assert len(fake_openai.chat_requests) == 2, "the same event id costs one provider call"


async def test_single_flight_across_three_replicas_on_the_cluster(
        openai_service: Any, fake_openai: Any, redis_cluster: RedisCluster) -> None:
    services = await replicas(openai_service, 3, **on_cluster(redis_cluster))
    fake_openai.script(reply(None, delay_s=1.5))
    results = [result_of(r) for r in await asyncio.gather(
        *(services[i % 3].request("campaign.quest", SHEET) for i in range(9)))]
    assert len(fake_openai.chat_requests) == 1
    assert sorted(r["cached"] for r in results) == [False] + [True] * 8


async def test_a_limit_smaller_than_the_replica_count_holds_on_the_cluster(
        openai_service: Any, fake_openai: Any, redis_cluster: RedisCluster) -> None:
    services = await replicas(openai_service, 3, **on_cluster(
        redis_cluster, rate_limit_text="off", rate_limit_user_share=1,
        rate_limit_models={"gpt-5-nano": "2/3s"}))
    exchanges = await asyncio.gather(*(services[i % 3].request(
        "character.backstory", sheet(i), timeout_s=60) for i in range(5)))
    assert all(result_of(e) for e in exchanges)
    times = [call.received_at for call in fake_openai.chat_requests]
    assert len(times) == 5
    assert most_in_any_window(times, 3.0) <= 2


async def test_cache_stats_and_invalidation_cover_every_master(
        settings_factory: Callable[..., Settings], redis_cluster: RedisCluster) -> None:
    settings = settings_factory(**on_cluster(redis_cluster))
    redis = open_redis(settings.redis_url, "cluster")
    try:
        guard = build_guard(settings, redis)
        for n in range(30):
            await redis.hset(guard.keys.cache_entry("world.location", f"d{n}"),
                             mapping={"g": "0.0", "v": "[]"})
        owners = Counter(redis_cluster.master_of(guard.keys.cache_entry("world.location", f"d{n}"))
                         .port for n in range(30))
        assert len(owners) == 3, "the entries are spread over the three masters"
        entries, _ = await guard.cache.stats()
        assert entries == Counter({"world.location": 30})
        assert await guard.cache.invalidate("world.location") == 30
        entries, generations = await guard.cache.stats()
        assert entries == Counter() and generations == {"world.location": 1}
    finally:
        await redis.aclose()


@pytest.mark.parametrize("mode", ["standalone", "cluster"])
async def test_a_mode_that_does_not_fit_the_server_stops_start_up(
        settings_factory: Callable[..., Settings], redis_cluster: RedisCluster,
        mode: str) -> None:
    one_node = f"redis://127.0.0.1:{redis_cluster.nodes[0].port}/0"
    settings = settings_factory(redis_mode=mode,
                                redis_url=one_node if mode == "standalone" else REDIS_URL)
    with pytest.raises(RedisMisconfigured) as raised:
        await asyncio.wait_for(run_service(settings, stop=asyncio.Event()), 30)
    line = str(raised.value)
    assert "\n" not in line
    if mode == "standalone":
        assert line == (f"REDIS_MODE=standalone, but {one_node} is a Redis Cluster node (keys "
                        "of other slots would answer MOVED); set REDIS_MODE=cluster")
    else:
        assert line.startswith(f"REDIS_MODE=cluster, but {REDIS_URL} is not a Redis Cluster")
