"""The Redis client holds up under many requests in flight: redis-py's default pool refused
a command once 100 connections were busy ("Too many connections"), and the service took that
for Redis being down (cache and shared limits off) at a thousand requests in flight. The
standalone client now waits for a connection instead."""

from __future__ import annotations

import asyncio

from llm_consumer.store.client import open_redis
from tests.conftest import REDIS_URL


async def test_more_commands_in_flight_than_connections_all_succeed() -> None:
    redis = open_redis(REDIS_URL, "standalone", max_connections=4)
    try:
        answers = await asyncio.gather(*(redis.ping() for _ in range(300)))
        opened = len(redis.connection_pool._available_connections)  # all back in the pool
    finally:
        await redis.aclose()

    assert answers == [True] * 300
    assert opened <= 4


async def test_the_service_default_covers_a_thousand_in_flight() -> None:
    redis = open_redis(REDIS_URL, "standalone")  # the defaults run_service passes
    try:
        answers = await asyncio.gather(*(redis.ping() for _ in range(2_000)))
    finally:
        await redis.aclose()

    assert answers == [True] * 2_000
