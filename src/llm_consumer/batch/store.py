"""Batch state in Redis, all of it: a restarted service (or another replica) carries on from here.

Keys share the `{batch}` hash tag, so every script below runs on one Redis Cluster slot:
- `open`: a sorted set of entries waiting for a batch (score: when they arrived, ms);
- `e:<entry>`: one request's call and what publishing its answer needs (a hash);
- `r:<sha256 of the request key>`: the entry of a request (re-delivery and job.cancel find it);
- `all`: the batches not yet finished; `b:<batch>`: one batch (its entries, the API's ids);
- `lock:<name>`: a lease, so one replica at a time flushes, or works on one batch.

An entry's `state` moves open -> (taken into a batch) -> publishing -> done, or to cancelled
from open or a batch; `publishing` marks the point after which a cancel comes too late.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import asdict, dataclass, fields
from typing import Any, cast

import orjson

from llm_consumer.store.client import RedisClient
from llm_consumer.store.keys import Keys

TAG = "{batch}"
ENTRY_TTL_S = 3 * 86_400  # past the 24 h window and a day of polling
DONE_TTL_S = 3_600

ADD = """
-- KEYS: index, entry, open   ARGV: entry id, now (ms), ttl (s), field, value, ...
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return ARGV[1]
"""

TAKE = """
-- KEYS: open, all, batch   ARGV: batch id, created (s), entries (JSON), model, entry ids...
local taken = {}
for i = 5, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then taken[#taken + 1] = ARGV[i] end
end
if #taken == 0 then return 0 end
redis.call('HSET', KEYS[3], 'state', 'new', 'entries', cjson.encode(taken), 'model', ARGV[4],
           'created_at', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return #taken
"""

# An entry's state changes only from a live one (open or taken): never back from the end.
MOVE = """
-- KEYS: entry, open   ARGV: new state (cancelled | publishing | done), entry id, ttl (s)
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'gone' end
if state == 'done' or state == 'cancelled' then return state end
if state == 'publishing' and ARGV[1] == 'cancelled' then return state end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
if ARGV[1] ~= 'publishing' then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return state
"""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One request waiting for (or in) a batch."""

    id: str
    key: str  # the caller-scoped request key (job ledger, cancel)
    model: str
    kind: str
    envelope: str  # the request event, JSON
    subject: str
    permissions: str  # JSON list
    reply_to: str
    user: str  # for usage analytics
    body: str  # the chat-completions body, JSON
    submitted_at: float  # epoch seconds
    attempt: int = 0
    size: int = 0  # bytes of its line in the input file
    state: str = "open"

    def call_body(self) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(self.body)
        return body

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Batch:
    id: str
    state: str  # new (not yet submitted) | submitted | cancel_requested
    entries: tuple[str, ...]
    model: str
    created_at: float
    api_id: str = ""
    status: str = ""  # the API's status when last polled
    polled_at: float = 0.0


class BatchStore:
    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self._redis = redis
        self._base = f"{keys.prefix}batch:{TAG}:"
        self._add = redis.register_script(ADD)
        self._take = redis.register_script(TAKE)
        self._move = redis.register_script(MOVE)
        self._unlock = redis.register_script(UNLOCK)
        self._renew = redis.register_script(RENEW)

    def _open(self) -> str:
        return f"{self._base}open"

    def _all(self) -> str:
        return f"{self._base}all"

    def _entry(self, entry_id: str) -> str:
        return f"{self._base}e:{entry_id}"

    def _index(self, request_key: str) -> str:
        return f"{self._base}r:{hashlib.sha256(request_key.encode()).hexdigest()}"

    def _batch(self, batch_id: str) -> str:
        return f"{self._base}b:{batch_id}"

    # -- entries

    async def add(self, entry: Entry) -> str:
        """Store `entry` unless its request has one already; the request's entry id."""
        values = [str(v) for pair in asdict(entry).items() for v in pair]
        found = await self._add(
            keys=[self._index(entry.key), self._entry(entry.id), self._open()],
            args=[entry.id, int(entry.submitted_at * 1000), ENTRY_TTL_S, *values])
        return found.decode() if isinstance(found, bytes) else str(found)

    async def entry(self, entry_id: str) -> Entry | None:
        raw = await self._redis.hgetall(self._entry(entry_id))
        if not raw:
            return None
        values = {_text(k): _text(v) for k, v in raw.items()}
        kinds = {f.name: f.type for f in fields(Entry)}
        known: dict[str, Any] = {name: (float(value) if kinds[name] == "float" else
                                        int(value) if kinds[name] == "int" else value)
                                 for name, value in values.items() if name in kinds}
        return Entry(**known)

    async def entry_of(self, request_key: str) -> str | None:
        found = await self._redis.get(self._index(request_key))
        return found.decode() if isinstance(found, bytes) else found

    async def forget(self, request_key: str) -> None:
        """The request may be batched again (its entry ended in a retryable failure)."""
        await self._redis.delete(self._index(request_key))

    async def move(self, entry_id: str, state: str) -> str:
        """Set the entry's state unless it ended already; the state it had."""
        previous = await self._move(keys=[self._entry(entry_id), self._open()],
                                    args=[state, entry_id, DONE_TTL_S])
        return previous.decode() if isinstance(previous, bytes) else str(previous)

    async def states(self, entry_ids: tuple[str, ...]) -> list[str | None]:
        """The entries' states, in one round trip (a batch may hold 50,000)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.hget(self._entry(entry_id), "state")
            found = await pipe.execute()
        return [None if state is None else _text(state) for state in found]

    async def open_summary(self) -> tuple[int, float]:
        """How many entries wait, and when the oldest arrived (epoch seconds; 0 for none):
        two small replies each tick, the full list only when a batch is made."""
        count = int(await self._redis.zcard(self._open()))
        oldest = await self.waiting(1)
        return count, oldest[0][1] if oldest else 0.0

    async def waiting(self, limit: int) -> list[tuple[str, float]]:
        """The oldest open entries (id, arrival in epoch seconds), at most `limit`."""
        rows = cast(list[tuple[bytes, float]], await self._redis.zrange(
            self._open(), 0, limit - 1, withscores=True))
        return [(_text(eid), float(score) / 1000) for eid, score in rows]

    async def models(self, entry_ids: list[str]) -> dict[str, tuple[str, int]]:
        """Each entry's model and line size, in the order given (gone entries left out)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.hmget(self._entry(entry_id), ["model", "size"])
            rows = await pipe.execute()
        return {entry_id: (_text(model), int(size or 0))
                for entry_id, (model, size) in zip(entry_ids, rows, strict=True)
                if model is not None}

    # -- batches

    async def take(self, model: str, entry_ids: list[str]) -> Batch | None:
        """A new batch of those entries still open (none: all were taken or cancelled)."""
        batch_id = uuid.uuid4().hex
        created = time.time()
        count = await self._take(keys=[self._open(), self._all(), self._batch(batch_id)],
                                 args=[batch_id, created, orjson.dumps(entry_ids), model,
                                       *entry_ids])
        return await self.batch(batch_id) if int(count) else None

    async def batch_ids(self) -> list[str]:
        return sorted(m.decode() if isinstance(m, bytes) else m
                      for m in await self._redis.smembers(self._all()))

    async def batch(self, batch_id: str) -> Batch | None:
        raw = await self._redis.hgetall(self._batch(batch_id))
        if not raw:
            return None
        v = {_text(k): _text(val) for k, val in raw.items()}
        return Batch(batch_id, v["state"], tuple(orjson.loads(v["entries"])), v["model"],
                     float(v["created_at"]), v.get("api_id", ""), v.get("status", ""),
                     float(v.get("polled_at", 0.0)))

    async def update(self, batch_id: str, **values: str | float) -> None:
        await self._redis.hset(self._batch(batch_id),
                               mapping={k: str(v) for k, v in values.items()})

    async def finish(self, batch_id: str) -> None:
        """The batch is over: forget it (its entries expire on their own)."""
        await self._redis.srem(self._all(), batch_id)
        await self._redis.expire(self._batch(batch_id), DONE_TTL_S)

    # -- leases

    async def lock(self, name: str, owner: str, ttl_s: float) -> bool:
        return bool(await self._redis.set(f"{self._base}lock:{name}", owner, nx=True,
                                          px=max(1, int(ttl_s * 1000))))

    async def renew(self, name: str, owner: str, ttl_s: float) -> None:
        await self._renew(keys=[f"{self._base}lock:{name}"],
                          args=[owner, max(1, int(ttl_s * 1000))])

    async def unlock(self, name: str, owner: str) -> None:
        await self._unlock(keys=[f"{self._base}lock:{name}"], args=[owner])


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
