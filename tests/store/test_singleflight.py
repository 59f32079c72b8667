"""Single-flight on its own: the in-process flights of one replica, and a follower on another
replica polling Redis for its leader's answer (stored, given up, leader dead, deadline)."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from llm_consumer.store.keys import Keys
from llm_consumer.store.singleflight import LocalFlights, await_leader

KIND, DIGEST, GENERATION = "character.backstory", "d1g3st", "0.0"


async def test_the_first_leads_and_the_others_get_its_answer() -> None:
    flights = LocalFlights()
    flight, leading = flights.join(DIGEST)
    same, second_leads = flights.join(DIGEST)
    assert leading and not second_leads and same is flight
    follower = asyncio.create_task(flights.follow(same, timeout_s=5))
    flights.land(DIGEST, flight, b"the answer")
    assert await follower == b"the answer"
    _, leads_again = flights.join(DIGEST)
    assert leads_again, "a landed flight is gone: the next identical request leads anew"


async def test_a_failed_leader_sends_its_followers_their_own_way() -> None:
    flights = LocalFlights()
    flight, _ = flights.join(DIGEST)
    follower = asyncio.create_task(flights.follow(flight, timeout_s=5))
    flights.land(DIGEST, flight, None)
    assert await follower is None


async def test_a_slow_leader_is_not_waited_for_past_the_time_out() -> None:
    flights = LocalFlights()
    flight, _ = flights.join(DIGEST)
    assert await flights.follow(flight, timeout_s=0.05) is None
    assert not flight.done(), "the leader's flight goes on; only the follower stopped"
    flights.land(DIGEST, flight, b"late")


async def test_a_follower_on_another_replica_gets_the_stored_answer(
        redis: aioredis.Redis, keys: Keys) -> None:
    await redis.set(keys.flight(DIGEST), "leader-instance")
    waiting = asyncio.create_task(await_leader(redis, keys, kind=KIND, digest=DIGEST,
                                               generation=GENERATION,
                                               deadline=time.monotonic() + 5))
    await asyncio.sleep(0.05)
    await redis.hset(keys.cache_entry(KIND, DIGEST), mapping={"g": GENERATION, "v": b"stored"})
    assert await waiting == b"stored"


async def test_an_answer_of_an_older_cache_generation_is_not_taken(
        redis: aioredis.Redis, keys: Keys) -> None:
    """After a cache invalidation, an answer stored under the old generation is stale."""
    await redis.set(keys.flight(DIGEST), "leader-instance")
    await redis.hset(keys.cache_entry(KIND, DIGEST), mapping={"g": "0.0", "v": b"stale"})
    found = await await_leader(redis, keys, kind=KIND, digest=DIGEST, generation="1.0",
                               deadline=time.monotonic() + 0.3)
    assert found == "timeout"


async def test_a_claim_given_up_or_a_dead_leader_ends_the_wait(
        redis: aioredis.Redis, keys: Keys) -> None:
    # No claim at all: the leader gave up (or finished without a storable answer).
    found = await await_leader(redis, keys, kind=KIND, digest=DIGEST, generation=GENERATION,
                               deadline=time.monotonic() + 5)
    assert found == "vanished"
    # A claim naming an instance whose liveness key has lapsed: the leader died.
    await redis.set(keys.flight(DIGEST), "gone-instance")
    found = await await_leader(redis, keys, kind=KIND, digest=DIGEST, generation=GENERATION,
                               deadline=time.monotonic() + 5, leader="gone-instance")
    assert found == "vanished", "not waited for until the deadline"
    # The same claim with the leader alive: waited for until the deadline.
    await redis.set(keys.instance("live-instance"), "1", ex=30)
    found = await await_leader(redis, keys, kind=KIND, digest=DIGEST, generation=GENERATION,
                               deadline=time.monotonic() + 0.3, leader="live-instance")
    assert found == "timeout"
