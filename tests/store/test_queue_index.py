"""The queue index on the real Redis: superseded copies in either delivery order, the bound on
indexed requests, band counts and positions, and the signed copy id."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from llm_consumer.bus.queue_index import CopySigner
from llm_consumer.identity import RequestOwner
from llm_consumer.store.keys import Keys
from llm_consumer.store.queue_index import Entry, QueueIndexStore, owner_digest


def entry(subject: str, request_id: str, priority: int = 0, *,
          body: bytes | None = b"{}") -> Entry:
    return Entry(key=RequestOwner(subject, "/peer").key(request_id),
                 owner=owner_digest(subject), request_id=request_id, priority=priority,
                 queued_us=time.time_ns() // 1000, body=body,
                 authorization="Bearer t", reply_to="")


def store(redis: aioredis.Redis, keys: Keys, max_entries: int = 100) -> QueueIndexStore:
    return QueueIndexStore(redis, keys, ttl_s=600, max_entries=max_entries)


async def test_a_prioritized_request_runs_from_its_new_copy_only(redis: aioredis.Redis,
                                                                 keys: Keys) -> None:
    index = store(redis, keys)
    for first_delivered in ("new", "old"):
        queued = entry("alice", f"r-{first_delivered}")
        assert await index.add(queued) == 1
        moved = await index.prioritize(queued.key, queued.owner, 9)
        assert (moved.outcome, moved.previous, moved.body) == ("accepted", 0, b"{}")
        old = (queued.key, queued.owner, 0, "", 0)
        new = (queued.key, queued.owner, 9, moved.copy_id, 0)
        if first_delivered == "new":
            assert await index.started(*new) is True
            assert await index.started(*old) is False  # also after the new copy started
        else:
            assert await index.started(*old) is False
            assert await index.started(*new) is True
        assert await index.started(*new) is True  # a redelivery of the live copy runs
        assert (await index.depths(queued.owner, queued.key)).bands == (0,) * 10


async def test_prioritize_says_why_it_did_not_move(redis: aioredis.Redis, keys: Keys) -> None:
    index = store(redis, keys)
    big = entry("alice", "big", body=None)
    await index.add(big)
    assert (await index.prioritize(big.key, big.owner, 9)).outcome == "too_large"
    assert (await index.prioritize(big.key, big.owner, 0)).outcome == "unchanged"
    assert (await index.prioritize("no-such", big.owner, 9)).outcome == "not_found"
    started = entry("alice", "started")
    await index.add(started)
    assert await index.started(started.key, started.owner, 0, "", 0)
    assert (await index.prioritize(started.key, started.owner, 9)).outcome == "not_found"
    assert await index.add(started) == 0  # an index copy read late is not counted


async def test_bands_positions_and_the_bound(redis: aioredis.Redis, keys: Keys) -> None:
    index = store(redis, keys, max_entries=5)
    queued = [entry("alice", "a0"), entry("bob", "b0"), entry("alice", "a5", 5),
              entry("alice", "a1"), entry("bob", "b9", 9)]
    for item in queued:
        assert await index.add(item) == 1
    assert await index.add(entry("carol", "c0")) == -1  # 5 indexed: the bound
    alice = owner_digest("alice")
    mine = await index.depths(alice, queued[3].key)
    assert mine.bands[0] == 2 and mine.bands[5] == 1 and sum(mine.bands) == 3
    # a1 waits behind b9 and a5 (higher bands) and a0, b0 (earlier in its band)
    assert (mine.target.ahead_in_higher, mine.target.ahead_in_band) == (2, 2)
    assert mine.target.position == 4
    everyone = await index.depths(None, None)
    assert sum(everyone.bands) == 5 and everyone.target.position is None


def test_a_copy_id_counts_only_with_the_service_signature() -> None:
    signer = CopySigner(b"k" * 32)
    headers = signer.headers("req-1", "copy-1")
    assert signer.read("req-1", headers) == "copy-1"
    assert signer.read("req-2", headers) == ""  # another message's signature
    assert signer.read("req-1", {**headers, "x-llm-copy": "copy-2"}) == ""
    assert signer.read("req-1", {"x-llm-copy": "copy-1"}) == ""
    assert CopySigner(b"x" * 32).read("req-1", headers) == ""


async def test_a_control_event_is_answered_once(redis: aioredis.Redis, keys: Keys) -> None:
    index = store(redis, keys)
    name = RequestOwner("alice", "/peer").key("status-1")
    assert [await index.once(name) for _ in range(3)] == [True, False, False]
    assert await index.once(RequestOwner("bob", "/peer").key("status-1")) is True


async def test_a_batch_adds_as_one_add_after_another(redis: aioredis.Redis, keys: Keys) -> None:
    index = store(redis, keys, max_entries=4)
    started = entry("alice", "started")
    assert await index.add(started) == 1
    assert await index.started(started.key, started.owner, 0, "", 0)
    first, again = entry("alice", "a0"), entry("bob", "b5", 5)
    batch = [first, entry("alice", "a0"), started, again, entry("bob", "b0"),
             entry("carol", "c0"), entry("carol", "c9", 9)]

    # a copy read twice counts once, a started request is not added, the bound holds mid-batch
    assert await index.add_many(batch) == [1, 0, 0, 1, 1, 1, -1]
    assert await index.add_many([]) == []
    everyone = await index.depths(None, again.key)
    assert everyone.bands[0] == 3 and everyone.bands[5] == 1 and sum(everyone.bands) == 4
    assert (everyone.target.priority, everyone.target.position) == (5, 0)
    bob = await index.depths(owner_digest("bob"), None)
    assert bob.bands[0] == 1 and bob.bands[5] == 1
    stored = await redis.hgetall(index.record(first.key))
    assert stored[b"id"] == b"a0" and stored[b"auth"] == b"Bearer t" and stored[b"body"] == b"{}"
