"""What one Redis command costs this process in CPU, through the client the service uses
(redis-py, with hiredis when installed), at a fixed number of commands in flight.

    .venv/bin/python bench/redis_call_cost.py [--calls 5000] [--in-flight 32]

Runs against the local Redis under a key of its own (removed at the end) on uvloop, as `run`
does, and prints CPU microseconds per call (process time / calls, so the server's own time is
not in it) for a GET, a small script (EVALSHA) and a three-command pipeline. Repeat it and
compare medians: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import uvloop
from redis.utils import HIREDIS_AVAILABLE

REDIS_URL = "redis://127.0.0.1:6379/0"
SCRIPT = "return {KEYS[1], ARGV[1], redis.call('GET', KEYS[1])}"


async def cpu_per_call(call: Callable[[], Awaitable[object]], calls: int,
                       in_flight: int) -> float:
    gate = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one() for _ in range(min(calls, 500))))  # warm: pool, script cache
    started = time.process_time()
    await asyncio.gather(*(one() for _ in range(calls)))
    return (time.process_time() - started) / calls * 1e6


async def main(calls: int, in_flight: int) -> None:
    redis = aioredis.from_url(REDIS_URL, socket_timeout=5.0, max_connections=2 * in_flight)
    key = f"bench-redis-cost-{uuid.uuid4().hex[:8]}"
    script = redis.register_script(SCRIPT)

    async def pipeline() -> object:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.hget(f"{key}:h", "f")
            pipe.expire(key, 60)
            return await pipe.execute()

    try:
        await redis.set(key, "x" * 200, ex=600)
        print(f"parser: {'hiredis' if HIREDIS_AVAILABLE else 'pure Python'}; "
              f"{calls} calls, {in_flight} in flight")
        for name, call in (("GET", lambda: redis.get(key)),
                           ("script (EVALSHA)", lambda: script(keys=[key], args=["a" * 40, 3])),
                           ("pipeline of 3", pipeline)):
            print(f"{name:<18} {await cpu_per_call(call, calls, in_flight):7.1f} µs CPU a call")
    finally:
        await redis.delete(key)
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=32)
    opts = parser.parse_args()
    uvloop.run(main(opts.calls, opts.in_flight))
