"""What one Redis command costs this process in CPU, through the client the service uses
(`store/client.open_redis`: redis-py, replies parsed and commands packed by hiredis) and through
redis-py's default asyncio client (commands packed in Python), at a fixed number in flight.

    .venv/bin/python bench/redis_call_cost.py [--calls 5000] [--in-flight 32]

Runs against the local Redis under a key of its own (removed at the end) on uvloop, as `run`
does, and prints CPU microseconds per call (process time / calls, so the server's own time is
not in it) for a GET, a script with 2 arguments, one with 45 (as the rate-limit script of five
scopes) and a three-command pipeline; the two clients alternate, three rounds. Repeat it and
compare medians: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import uvloop
from redis.utils import HIREDIS_AVAILABLE

from llm_consumer.store.client import open_redis

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


async def costs(redis: aioredis.Redis, calls: int, in_flight: int) -> dict[str, float]:
    key = f"bench-redis-cost-{uuid.uuid4().hex[:8]}"
    script = redis.register_script(SCRIPT)
    wide: list[str | int | float] = [f"{key}:{n}" for n in range(20)]
    wide += [*range(20), "admission", 0.8, 5]

    async def pipeline() -> object:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.hget(f"{key}:h", "f")
            pipe.expire(key, 60)
            return await pipe.execute()

    calls_by_name: dict[str, Callable[[], Awaitable[object]]] = {
        "GET": lambda: redis.get(key),
        "script, 2 arguments": lambda: script(keys=[key], args=["a" * 40, 3]),
        "script, 45 arguments": lambda: script(keys=[key], args=wide),
        "pipeline of 3": pipeline,
    }
    try:
        await redis.set(key, "x" * 200, ex=600)
        return {name: await cpu_per_call(call, calls, in_flight)
                for name, call in calls_by_name.items()}
    finally:
        await redis.delete(key)


async def main(calls: int, in_flight: int, rounds: int = 3) -> None:
    clients = {"service client": open_redis(REDIS_URL, "standalone",
                                            max_connections=2 * in_flight),
               "redis-py default": aioredis.from_url(REDIS_URL, socket_timeout=5.0,
                                                     max_connections=2 * in_flight)}
    print(f"hiredis {'installed' if HIREDIS_AVAILABLE else 'missing'}; {calls} calls, "
          f"{in_flight} in flight, {rounds} rounds; CPU µs a call, median")
    found: dict[str, dict[str, list[float]]] = {name: {} for name in clients}
    try:
        for _ in range(rounds):
            for name, client in clients.items():
                for command, us in (await costs(client, calls, in_flight)).items():
                    found[name].setdefault(command, []).append(us)
    finally:
        for client in clients.values():
            await client.aclose()
    names = list(clients)
    print(f"{'command':<22}" + "".join(f"{name:>18}" for name in names))
    for command in found[names[0]]:
        print(f"{command:<22}" + "".join(f"{statistics.median(found[n][command]):18.1f}"
                                         for n in names))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=32)
    opts = parser.parse_args()
    uvloop.run(main(opts.calls, opts.in_flight))
