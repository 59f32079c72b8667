"""The job ledger on the real Redis: what a release may forget and what it must keep."""

from __future__ import annotations

import redis.asyncio as aioredis

from llm_consumer.store.jobs import JobLedger
from llm_consumer.store.keys import Keys


def ledger(redis: aioredis.Redis, keys: Keys, instance: str) -> JobLedger:
    return JobLedger(redis, keys, instance_id=instance, result_ttl_s=60, lease_s=5)


async def test_release_forgets_only_this_instances_unfinished_claim(
        redis: aioredis.Redis, keys: Keys) -> None:
    mine, theirs = ledger(redis, keys, "replica-a"), ledger(redis, keys, "replica-b")
    await theirs.heartbeat()

    assert (await mine.claim_now("running-here")).verdict == "claimed"
    await mine.release("running-here")
    assert not await redis.exists(keys.job("running-here"))

    assert (await theirs.claim_now("running-there")).verdict == "claimed"
    await mine.release("running-there")
    assert (await mine.claim_now("running-there")).verdict == "busy", (
        "another replica's claim stays")

    assert (await mine.claim_now("finished")).verdict == "claimed"
    await mine.finish("finished", [b'{"type":"content.generated"}'])
    await mine.release("finished")
    done = await mine.claim_now("finished")
    assert done.verdict == "done" and done.stored_events == (b'{"type":"content.generated"}',)
