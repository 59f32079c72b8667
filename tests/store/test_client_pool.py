"""The Redis client holds up under many requests in flight: redis-py's default pool refused
a command once 100 connections were busy ("Too many connections"), and the service took that
for Redis being down (cache and shared limits off) at a thousand requests in flight. The pool
now holds two connections per request in flight unless REDIS_MAX_CONNECTIONS says otherwise."""

from __future__ import annotations

import asyncio

from llm_consumer.store.client import open_redis
from tests.conftest import REDIS_URL


async def test_a_set_limit_is_the_limit() -> None:
    redis = open_redis(REDIS_URL, "standalone", max_connections=4)
    try:
        await asyncio.gather(*(redis.ping() for _ in range(4)))
        assert redis.connection_pool.max_connections == 4
    finally:
        await redis.aclose()


async def test_the_service_default_covers_a_thousand_in_flight() -> None:
    redis = open_redis(REDIS_URL, "standalone", concurrency=1024)  # CONCURRENCY's default
    try:
        answers = await asyncio.gather(*(redis.ping() for _ in range(2_000)))
    finally:
        await redis.aclose()

    assert answers == [True] * 2_000


async def test_a_low_concurrency_still_leaves_room_for_what_runs_beside_requests() -> None:
    # CONCURRENCY=1 once gave a pool of 2: the queue index and heartbeats beside one request
    # found it full, and the service ran degraded.
    redis = open_redis(REDIS_URL, "standalone", concurrency=1)
    try:
        answers = await asyncio.gather(*(redis.ping() for _ in range(200)))
    finally:
        await redis.aclose()

    assert answers == [True] * 200
