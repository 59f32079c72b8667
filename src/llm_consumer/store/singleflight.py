"""Single-flight: identical requests in flight at the same time cost one provider call.

Two levels. On one replica, identical requests share an in-process future: the first leads,
the others wait on it without touching Redis (this level works with Redis down, too). Across
replicas, the local leader claims the request's digest in Redis inside the admission script;
a replica that finds a claim follows it, polling (20 ms doubling to 250 ms) for the answer the
leader stores in the cache entry. Every wait is bounded: a leader that fails releases its claim
and the followers go their own way; one that dies leaves a claim naming it, and as soon as its
instance liveness key lapses, followers stop waiting and the next request takes the claim over
(lookup.lua). Followers that time out compute the answer themselves. Nothing ever hangs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from llm_consumer.store.client import RedisClient
from llm_consumer.store.keys import Keys

POLL_FIRST_S = 0.02
POLL_MAX_S = 0.25
Vanished = Literal["vanished"]
TimedOut = Literal["timeout"]


class LocalFlights:
    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[bytes | None]] = {}

    def join(self, digest: str) -> tuple[asyncio.Future[bytes | None], bool]:
        """The flight for `digest`, and whether the caller leads it."""
        flight = self._flights.get(digest)
        if flight is not None:
            return flight, False
        flight = asyncio.get_running_loop().create_future()
        self._flights[digest] = flight
        return flight, True

    def land(self, digest: str, flight: asyncio.Future[bytes | None],
             stored: bytes | None) -> None:
        """End the flight: followers get `stored`, or None (then they go their own way)."""
        if not flight.done():
            flight.set_result(stored)
        if self._flights.get(digest) is flight:
            del self._flights[digest]

    @staticmethod
    async def follow(flight: asyncio.Future[bytes | None], timeout_s: float) -> bytes | None:
        try:
            return await asyncio.wait_for(asyncio.shield(flight), timeout_s)
        except TimeoutError:
            return None


async def await_leader(redis: RedisClient, keys: Keys, *, kind: str, digest: str,
                       generation: str, deadline: float,
                       leader: str | None = None) -> bytes | Vanished | TimedOut:
    """Poll until the leader on another replica stored its answer (under `generation`), let
    its claim go without one, died (`leader`: its instance, when liveness is tracked), or
    `deadline` (monotonic) passes."""
    entry, claim = keys.cache_entry(kind, digest), keys.flight(digest)
    pause = POLL_FIRST_S
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, POLL_MAX_S)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hmget(entry, "g", "v")
            pipe.exists(claim)
            if leader is not None:
                pipe.exists(keys.instance(leader))
            (found_generation, stored), claimed, *alive = await pipe.execute()
        if stored is not None and found_generation == generation.encode():
            return bytes(stored)
        if not claimed or alive == [0]:
            return "vanished"
    return "timeout"
