"""What the queue index costs: the worker's one extra script per request, and the index
consumer's work per request (reading the copy, checking token and body, one script for one
copy or for a batch of the copies that arrived together).

    .venv/bin/python bench/queue_index_cost.py [--requests 2000]

Runs against the local Redis under a key prefix of its own (removed at the end); prints the
median and p95 of each step in microseconds, next to a plain Redis GET (one round trip).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import orjson
import redis.asyncio as aioredis

from llm_consumer.auth import TokenVerifier, mint_token
from llm_consumer.client import build_request
from llm_consumer.events.parsing import parse
from llm_consumer.identity import RequestOwner
from llm_consumer.store.keys import Keys
from llm_consumer.store.queue_index import Entry, QueueIndexStore, owner_digest

REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET = "bench-" + "s" * 64


async def timed(count: int, step: Callable[[int], Awaitable[object]]) -> list[float]:
    found = []
    for i in range(count):
        started = time.perf_counter()
        await step(i)
        found.append((time.perf_counter() - started) * 1e6)
    return found


def show(name: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p95 = ordered[int(len(ordered) * 0.95)]
    print(f"{name:<46} median {statistics.median(ordered):8.1f} us   p95 {p95:8.1f} us")


async def main(requests: int) -> None:
    redis = aioredis.from_url(REDIS_URL)
    keys = Keys(f"bench-qidx-{uuid.uuid4().hex[:8]}:")
    store = QueueIndexStore(redis, keys, ttl_s=600, max_entries=requests + 1)
    verifier = TokenVerifier(SECRET)
    bearer = mint_token(SECRET, subject="bench", permissions=("llm:content",), ttl_s=600)
    headers = {"authorization": f"Bearer {bearer}"}
    bodies = [orjson.dumps(build_request("world.location", {"context": {"name": f"n{i}",
              "class": "Rogue"}})) for i in range(requests)]
    owner = owner_digest("bench")
    made: list[Entry] = []
    try:
        await redis.set(f"{keys.prefix}probe", "1")
        show("baseline: GET (one round trip)", await timed(
            requests, lambda i: redis.get(f"{keys.prefix}probe")))

        def read(i: int) -> Entry:
            principal = verifier.verify_header(headers)
            parsed = parse(bodies[i], "content.requested", max_bytes=1_048_576)
            env = parsed.envelope
            entry = Entry(RequestOwner(principal.subject, env.source).key(env.id), owner, env.id,
                          0, time.time_ns() // 1000, bodies[i], headers["authorization"], "")
            made.append(entry)
            return entry

        async def read_async(i: int) -> Entry:
            return read(i)

        show("index consumer: token + parse of a copy (CPU)", await timed(requests, read_async))
        half = requests // 2
        show("index consumer: add script, one copy", await timed(
            half, lambda i: store.add(made[i])))
        batch = 50
        per_call = await timed((requests - half) // batch, lambda i: store.add_many(
            made[half + i * batch:half + (i + 1) * batch]))
        show(f"index consumer: add script, {batch} copies (per copy)",
             [us / batch for us in per_call])
        show("worker: started script (the hot-path cost)", await timed(
            len(made), lambda i: store.started(made[i].key, owner, 0, "", 0)))
    finally:
        found = [k async for k in redis.scan_iter(match=f"{keys.prefix}*")]
        if found:
            await redis.delete(*found)
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    asyncio.run(main(parser.parse_args().requests))
