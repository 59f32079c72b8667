"""The queue index in Redis: which requests wait in the work queue, per priority band and owner.

Every key shares one hash tag (`{qidx}`), so each operation is one atomic script, also on a
Redis Cluster (like the limiter's `{limits}`, it puts the index on one shard). Per request key
(identity.RequestOwner.key):
- `rec:<request>`: a hash (id, owner, priority, queued time, the body when it is at most
  QUEUE_INDEX_MAX_BODY_BYTES, its authorization and reply_to), expiring after QUEUE_INDEX_TTL_S;
- a sorted set per band for everyone (`all:<p>`) and per owner (`own:<owner digest>:<p>`),
  scored by arrival (µs, when the index consumer reads the copy, in delivery order: an AMQP
  timestamp has whole seconds); members older than the TTL are not counted, and are trimmed
  on add;
- `go:<request>`: the request has started (its attempt); an index copy read after that is
  not added;
- `sup:<request>`: the copy id of a re-prioritized request's live copy: any other copy of it
  is superseded (acked unprocessed when delivered).
`started` is the one call on the worker's path: one script, one round trip. The index
consumer adds the copies that arrive together in one script call (`add_many`).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog
from redis.exceptions import RedisError

from llm_consumer.store.client import RedisClient
from llm_consumer.store.health import RedisHealth
from llm_consumer.store.keys import Keys

log = structlog.get_logger(__name__)

TAG = "{qidx}"
BANDS = 10  # priorities 0-9 (the work queue's x-max-priority)
CONTROL_ONCE_TTL_S = 600
T = TypeVar("T")

ADD_SCRIPT = """
-- KEYS: all:0..9, then per entry: rec, go, own band. ARGV: ttl (s), cutoff (µs), max entries
-- (every band), entry count, then per entry: request key, score (µs), band, field count, the
-- record's field/value pairs. Returns per entry 1 added, 0 known or started, -1 index full.
-- The bands are trimmed and counted once for the whole batch.
local ttl, cutoff, max = tonumber(ARGV[1]), '(' .. ARGV[2], tonumber(ARGV[3])
local total = 0
for i = 1, 10 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', cutoff)
  total = total + redis.call('ZCARD', KEYS[i])
end
local added = {}
local a = 5
for e = 0, tonumber(ARGV[4]) - 1 do
  local rec, go, own = KEYS[11 + 3 * e], KEYS[12 + 3 * e], KEYS[13 + 3 * e]
  local member, score, fields = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 3])
  local band = KEYS[1 + tonumber(ARGV[a + 2])]
  if redis.call('EXISTS', go) == 1 or redis.call('EXISTS', rec) == 1 then
    added[e + 1] = 0
  else
    redis.call('ZREMRANGEBYSCORE', own, '-inf', cutoff)
    if total >= max then
      added[e + 1] = -1
    else
      redis.call('ZADD', band, score, member)
      redis.call('ZADD', own, score, member)
      redis.call('HSET', rec, unpack(ARGV, a + 4, a + 3 + fields))
      redis.call('EXPIRE', rec, ttl)
      redis.call('EXPIRE', band, ttl)
      redis.call('EXPIRE', own, ttl)
      total = total + 1
      added[e + 1] = 1
    end
  end
  a = a + 4 + fields
end
return added
"""

STARTED_SCRIPT = """
-- KEYS: rec, sup, go, all band, own band; ARGV: request key, this copy's id ('' = none),
-- attempt, ttl (s). Returns 0 when this copy is superseded, else 1 (and the request leaves
-- the index).
local live = redis.call('GET', KEYS[2])
if live and live ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[3], ARGV[3], 'EX', tonumber(ARGV[4]))
return 1
"""

PRIORITIZE_SCRIPT = """
-- KEYS: rec, sup, all:0..9, own:0..9; ARGV: request key, new priority, copy id, now (µs),
-- ttl (s). Returns {outcome, old priority, body, authorization, reply_to}.
local rec = KEYS[1]
if redis.call('EXISTS', rec) == 0 then return {'not_found'} end
local old = tonumber(redis.call('HGET', rec, 'prio'))
local new = tonumber(ARGV[2])
if old == new then return {'unchanged', old} end
local body = redis.call('HGET', rec, 'body')
if not body or body == '' then return {'too_large', old} end
redis.call('ZREM', KEYS[3 + old], ARGV[1])
redis.call('ZREM', KEYS[13 + old], ARGV[1])
redis.call('ZADD', KEYS[3 + new], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[13 + new], ARGV[4], ARGV[1])
redis.call('HSET', rec, 'prio', new, 'at', ARGV[4])
local ttl = tonumber(ARGV[5])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ttl)
return {'accepted', old, body, redis.call('HGET', rec, 'auth') or '',
        redis.call('HGET', rec, 'reply_to') or ''}
"""

UNDO_SCRIPT = """
-- KEYS: sup; ARGV: copy id. The copy was not published: the old copy is live again.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

STATUS_SCRIPT = """
-- KEYS: all:0..9, own:0..9 (or all:0..9 again for everyone), rec, go; ARGV: cutoff (µs).
-- Returns {count per band of KEYS[11..20]..., target priority, target first queued, ahead in
-- its band, ahead in higher bands, attempt when started}; -1 where unknown.
local counts = {}
for p = 0, 9 do
  counts[p + 1] = redis.call('ZCOUNT', KEYS[11 + p], ARGV[1], '+inf')
end
local prio, at, in_band, higher = -1, -1, -1, -1
if redis.call('EXISTS', KEYS[21]) == 1 then
  prio = tonumber(redis.call('HGET', KEYS[21], 'prio'))
  local raw = redis.call('HGET', KEYS[21], 'at')  -- as a string: '..' on a number rounds
  at = tonumber(redis.call('HGET', KEYS[21], 'first'))  -- first queued (before any move)
  in_band = redis.call('ZCOUNT', KEYS[1 + prio], ARGV[1], '(' .. raw)
  higher = 0
  for p = prio + 1, 9 do
    higher = higher + redis.call('ZCOUNT', KEYS[1 + p], ARGV[1], '+inf')
  end
end
counts[11] = prio
counts[12] = at
counts[13] = in_band
counts[14] = higher
counts[15] = tonumber(redis.call('GET', KEYS[22]) or '-1')
return counts
"""


def owner_digest(subject: str) -> str:
    """The name under which a caller's (token `sub`) queued requests are counted."""
    return hashlib.sha256(subject.encode()).hexdigest()[:32]


def band_of(priority: int | None) -> int:
    """The band the broker serves a message in (above x-max-priority counts as the top)."""
    return min(max(priority or 0, 0), BANDS - 1)


@dataclass(frozen=True, slots=True)
class Entry:
    """One queued request, as the index records it."""

    key: str  # identity.RequestOwner.key
    owner: str  # owner_digest of the token `sub`
    request_id: str
    priority: int
    queued_us: int
    body: bytes | None  # None: over the body bound (it cannot be re-published)
    authorization: str
    reply_to: str


@dataclass(frozen=True, slots=True)
class Prioritized:
    outcome: str  # accepted, not_found, unchanged, too_large
    previous: int | None = None
    copy_id: str = ""
    body: bytes = b""
    authorization: str = ""
    reply_to: str = ""


@dataclass(frozen=True, slots=True)
class Located:
    priority: int | None
    queued_us: int | None  # when it was first queued
    ahead_in_band: int | None
    ahead_in_higher: int | None
    attempt: int | None  # set once the request started

    @property
    def position(self) -> int | None:
        if self.ahead_in_band is None or self.ahead_in_higher is None:
            return None
        return self.ahead_in_band + self.ahead_in_higher


@dataclass(frozen=True, slots=True)
class Depths:
    bands: tuple[int, ...]  # queued per band 0-9, in scope
    target: Located


class QueueIndexStore:
    def __init__(self, redis: RedisClient, keys: Keys, *, ttl_s: int, max_entries: int,
                 health: RedisHealth | None = None) -> None:
        self._redis = redis
        self._base = f"{keys.prefix}q:{TAG}:"
        self._keys = keys
        self.ttl_s = ttl_s
        self._max_entries = max_entries
        self._health = health or RedisHealth()
        self._add = redis.register_script(ADD_SCRIPT)
        self._started = redis.register_script(STARTED_SCRIPT)
        self._prioritize = redis.register_script(PRIORITIZE_SCRIPT)
        self._undo = redis.register_script(UNDO_SCRIPT)
        self._status = redis.register_script(STATUS_SCRIPT)

    # -- key names ----------------------------------------------------------------------------

    def record(self, key: str) -> str:
        return f"{self._base}rec:{key}"

    def _sup(self, key: str) -> str:
        return f"{self._base}sup:{key}"

    def _go(self, key: str) -> str:
        return f"{self._base}go:{key}"

    def _all(self, band: int) -> str:
        return f"{self._base}all:{band}"

    def _own(self, owner: str, band: int) -> str:
        return f"{self._base}own:{owner}:{band}"

    def _inflight(self) -> str:
        return f"{self._base}inflight"

    def _cutoff(self, now_us: int) -> int:
        return now_us - self.ttl_s * 1_000_000

    # -- the index consumer ---------------------------------------------------------------------

    async def add(self, entry: Entry) -> int:
        """Record a queued request: 1 added, 0 known or already started, -1 the index is
        full (QUEUE_INDEX_MAX_LENGTH requests in all). Raises RedisError."""
        return (await self.add_many([entry]))[0]

    async def add_many(self, entries: Sequence[Entry]) -> list[int]:
        """`add` for each entry, in order, in one script call. Raises RedisError."""
        if not entries:
            return []
        keys: list[str] = self._bands_all()
        args: list[str | bytes | int] = [self.ttl_s, self._cutoff(time.time_ns() // 1000),
                                         self._max_entries, len(entries)]
        for entry in entries:
            band = band_of(entry.priority)
            fields: list[str | bytes | int] = [
                "id", entry.request_id, "owner", entry.owner, "prio", band,
                "at", entry.queued_us, "first", entry.queued_us, "auth", entry.authorization,
                "reply_to", entry.reply_to, "body", entry.body or b""]
            keys += [self.record(entry.key), self._go(entry.key), self._own(entry.owner, band)]
            args += [entry.key, entry.queued_us, band, len(fields), *fields]
        return [int(added) for added in await self._add(keys=keys, args=args)]

    # -- the worker's path ----------------------------------------------------------------------

    async def started(self, key: str, owner: str, priority: int | None, copy_id: str,
                      attempt: int) -> bool:
        """Take a starting request out of the index; False when this copy is superseded (a
        job.prioritize sent another). Redis failing: True (the request runs, as with the job
        ledger degraded)."""
        if not self._health.usable():
            return True
        band = band_of(priority)
        try:
            live = await self._started(
                keys=[self.record(key), self._sup(key), self._go(key), self._all(band),
                      self._own(owner, band)],
                args=[key, copy_id, attempt, self.ttl_s])
        except RedisError as error:
            self._health.failed("queue_index", error)
            return True
        return bool(live)

    # -- control ----------------------------------------------------------------------------

    async def once(self, name: str) -> bool:
        """True for the first instance to ask about `name` (a control event every instance
        receives, answered by one). Raises RedisError."""
        return bool(await self._redis.set(f"{self._base}once:{name}", "1", nx=True,
                                          ex=CONTROL_ONCE_TTL_S))

    async def prioritize(self, key: str, owner: str, priority: int) -> Prioritized:
        """Move `key` to `priority` and supersede its other copies. Raises RedisError."""
        copy_id = secrets.token_hex(16)
        now_us = time.time_ns() // 1000
        found = await self._prioritize(
            keys=[self.record(key), self._sup(key), *self._bands_all(), *self._bands(owner)],
            args=[key, priority, copy_id, now_us, self.ttl_s])
        outcome = _text(found[0])
        previous = int(found[1]) if len(found) > 1 else None
        if outcome != "accepted":
            return Prioritized(outcome, previous)
        return Prioritized(outcome, previous, copy_id, _bytes(found[2]), _text(found[3]),
                           _text(found[4]))

    async def undo(self, key: str, copy_id: str) -> None:
        """The new copy was not published: the old one runs as before."""
        await self._undo(keys=[self._sup(key)], args=[copy_id])

    async def depths(self, owner: str | None, target: str | None) -> Depths:
        """Queued per band (an owner's, or everyone's for None) and where `target` stands
        among everyone's. Raises RedisError."""
        now_us = time.time_ns() // 1000
        scope = self._bands(owner) if owner is not None else self._bands_all()
        record = self.record(target) if target else self.record("-")
        go = self._go(target) if target else self._go("-")
        raw = [int(x) for x in await self._status(
            keys=[*self._bands_all(), *scope, record, go], args=[self._cutoff(now_us)])]

        def known(value: int) -> int | None:
            return None if value < 0 else value

        return Depths(tuple(raw[:BANDS]), Located(
            known(raw[10]), known(raw[11]), known(raw[12]), known(raw[13]), known(raw[14])))

    async def in_flight(self, live_within_s: float) -> dict[str, int]:
        """Running requests per instance that reported within `live_within_s`. Raises
        RedisError."""
        now = time.time()
        found: dict[str, int] = {}
        raw = await self._redis.hgetall(self._inflight())
        for name, value in raw.items():
            count, _, at = _text(value).partition("|")
            if now - float(at or 0) <= live_within_s:
                found[_text(name)] = int(count)
        return found

    async def report_in_flight(self, instance: str, count: int) -> None:
        """This instance's running requests (read by queue.status). Raises RedisError."""
        await self._redis.hset(self._inflight(), instance,
                               f"{count}|{time.time():.3f}")

    async def retire(self, instance: str) -> None:
        await self._redis.hdel(self._inflight(), instance)

    async def job_state(self, key: str) -> tuple[str | None, bool, bytes | None]:
        """The job ledger's view of a request: (state, cancelled, stored events). Raises
        RedisError."""
        state, events = await self._redis.hmget(
            self._keys.job(key), ["state", "events"])
        cancelled = bool(await self._redis.exists(self._keys.cancelled(key)))
        return (_text(state) if state is not None else None, cancelled,
                _bytes(events) if events is not None else None)

    def _bands_all(self) -> list[str]:
        return [self._all(b) for b in range(BANDS)]

    def _bands(self, owner: str) -> list[str]:
        return [self._own(owner, b) for b in range(BANDS)]

    async def call(self, during: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """`call()`, or None when Redis failed (the answer then says `degraded`)."""
        try:
            return await call()
        except RedisError as error:
            log.warning("redis.unavailable", during=during, error=str(error))
            return None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()
