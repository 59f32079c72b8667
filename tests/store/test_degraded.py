"""Redis goes away mid-run and comes back (a dedicated redis-server, killed and restarted):
the service keeps serving in its stated degraded mode, says so, and recovers by itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from llm_consumer.store.admission import Admitted, Ask, Limited
from llm_consumer.store.keys import Keys
from llm_consumer.store.ratelimit import Scope
from llm_consumer.store.usage import Use, read_usage, today
from tests.bus.test_cache_e2e import SHEET, result_of
from tests.conftest import Service
from tests.store.conftest import RedisServer, limits, make_guard, wait_until


async def test_guard_falls_back_to_its_share_and_writes_back(redis_server: RedisServer) -> None:
    client = aioredis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    keys = Keys("degraded:")
    guard = make_guard(client, keys, limits=limits(replicas_hint=3))
    scope = Scope("operation", "text", "count", 6, 30.0)
    ask = Ask("character.backstory", "d1", (scope,))
    shared = await guard.admission.admit(ask)
    assert isinstance(shared, Admitted) and shared.generation is not None
    with capture_logs() as logs:
        redis_server.stop()
        local = [await guard.admission.admit(ask) for _ in range(3)]
        assert guard.degraded
        await guard.admission.finish(ask, None, use=Use("gpt-5-nano", "character.backstory",
                                                        "u1", 10, 20))
        assert await guard.invalidate("character.backstory") == 0
        redis_server.start()
        await asyncio.sleep(1.1)  # the cool-down after a failure
        recovered = await guard.admission.admit(ask)
    assert [type(v) for v in local] == [Admitted, Limited, Limited], (
        "6 // 3 = 2 for this replica, and it already admitted one through Redis")
    assert all(isinstance(v, Admitted) and v.generation is None for v in local[:1])
    assert isinstance(recovered, Admitted) and recovered.generation is not None
    assert not guard.degraded
    events = [entry["event"] for entry in logs if entry["event"].startswith("redis.")]
    assert events == ["redis.unavailable", "redis.recovered"], "each transition once"
    unavailable = next(e for e in logs if e["event"] == "redis.unavailable")
    assert "1/RATE_LIMIT_REPLICAS_HINT" in unavailable["degraded_mode"]
    assert await client.zcard(keys.rate_log("operation", "text")) == 2, (
        "the outage's admission was written back, then the new one")
    [row] = await read_usage(client, keys, [today()])
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (1, 10, 20)
    assert int(await client.hget(keys.cache_generations(), "character.backstory") or 0) == 1, (
        "the invalidation asked for during the outage was applied")
    await client.aclose()


async def test_service_serves_through_an_outage_and_recovers(
        redis_server: RedisServer, openai_service: Any, fake_openai: Any,
        tmp_path: Path) -> None:
    health = tmp_path / "health.json"
    service: Service = await openai_service(redis_url=redis_server.url, lease_s=5,
                                            health_file=str(health))

    def status() -> dict[str, Any]:
        state: dict[str, Any] = orjson.loads(health.read_bytes()) if health.exists() else {}
        return state

    assert result_of(await service.request("world.location", SHEET))["cached"] is False
    assert result_of(await service.request("world.location", SHEET))["cached"] is True
    redis_server.stop()
    during = [result_of(await service.request("world.location", SHEET)) for _ in range(2)]
    assert [r["cached"] for r in during] == [False, False], "no cache while Redis is away"
    await wait_until(lambda: status().get("status") == "degraded")
    assert status()["components"]["cache"] == "degraded"
    redis_server.start()
    await wait_until(lambda: status().get("status") == "ok")
    assert status()["components"]["cache"] == "ok"
    assert result_of(await service.request("world.location", SHEET))["cached"] is False
    assert result_of(await service.request("world.location", SHEET))["cached"] is True
    assert len(fake_openai.chat_requests) == 4
