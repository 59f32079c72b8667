"""Admission: a request's path decided before the provider is paid, in a few small scripts.

Each script touches the keys of one hash tag (keys.py), so the same calls run on a standalone
server, behind Sentinel and on a Redis Cluster:
1. the job-ledger claim (claim.lua, tag: the request key), when the ask carries one, and the
   cache generations (one HMGET), together (store/together.py);
2. lookup.lua (tag: the request digest): a cached answer (`Hit`), a leader on another replica
   (`Follow`), or a miss that claims the single-flight for this admission;
3. limits.lua (tag: the limiter's): one atomic check-and-record over every rate-limit scope
   (`Admitted`, or `Limited` and the single-flight claim given back).
Round trips: a hit costs 2, a miss 3 (the first pair goes as one pipeline, store/together.py,
or concurrently on a cluster), a further provider call of a request (no cache, no
single-flight) 1; with REDIS_WAIT_REPLICAS, an admitted call one more (WAIT: the admission is
on a replica before the call goes out, so a failover cannot lose it). A ledger that knows the
request already (done, cancelled, running elsewhere) answers `Known` after the first. Whether a
claim's owner is alive is asked beside the scripts (its liveness key is in another slot), only
when a claim is found: a dead owner's claim is then taken over by asking again.
`finish` stores the answer and ends the claim (store.lua), records the job and counts usage:
three calls on three tags, sent together.

With Redis unreachable (see `health`), admission falls back to this replica's LocalLimiter,
nothing is cached or claimed, and usage adds up in memory; when Redis answers again, the
admissions and usage of the outage are written back so the shared windows stay honest.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from llm_consumer.store.cache import HANDOFF_TTL_S
from llm_consumer.store.client import RedisClient
from llm_consumer.store.health import RedisHealth
from llm_consumer.store.jobs import Claim, JobLedger
from llm_consumer.store.keys import Keys
from llm_consumer.store.ratelimit import (
    WARN_AT,
    LocalLimiter,
    Notice,
    Pending,
    Scope,
    time_us,
)
from llm_consumer.store.singleflight import TimedOut, Vanished, await_leader
from llm_consumer.store.together import Call, script_call, together
from llm_consumer.store.usage import RETENTION_S, PendingUsage, Price, Use, increments, today


def _script(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


WAIT_REPLICAS_MS = 100
LOOKUP_SCRIPT = _script("lookup.lua")
LIMITS_SCRIPT = _script("limits.lua")
STORE_SCRIPT = _script("store.lua")
RESTAMP_SCRIPT = _script("restamp.lua")
RESTAMP_AFTER = 0.25  # share of the edge margin a call may leave after its admission unstamped
USAGE_SCRIPT = """
-- KEYS[1] usage hash of the day; ARGV[1] ttl (s); ARGV[2..] field, increment pairs (an
-- increment with a '.' is a float)
for i = 2, #ARGV, 2 do
  if string.find(ARGV[i + 1], '.', 1, true) then
    redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
  else
    redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return redis.call('EXPIRE', KEYS[1], ARGV[1])
"""


@dataclass(frozen=True, slots=True)
class Ask:
    """One admission question: a request (or a further provider call) and its scopes."""

    kind: str
    digest: str
    scopes: tuple[Scope, ...]
    read_cache: bool = False
    coalesce: bool = False
    lease_s: float = 60.0
    job: str | None = None  # a request id to claim in the job ledger first


@dataclass(frozen=True, slots=True)
class Known:
    """The job ledger already knows the request (`claim.verdict`: done, cancelled or busy)."""

    claim: Claim


@dataclass(frozen=True, slots=True)
class Hit:
    stored: bytes


@dataclass(frozen=True, slots=True)
class Follow:
    generation: str
    leader: str = ""  # the instance holding the single-flight claim


@dataclass(frozen=True, slots=True)
class Admitted:
    id: str
    generation: str | None  # None: admitted in degraded mode, nothing to store under
    claimed: bool
    notices: tuple[Notice, ...] = ()
    at_us: int = 0  # when it was recorded (Redis server time; this host's in degraded mode)
    admitted_at: float = field(default_factory=time.monotonic)  # this host's clock


@dataclass(frozen=True, slots=True)
class Limited:
    retry_after_s: float
    scope: Scope  # the one that frees last
    notices: tuple[Notice, ...] = ()
    at_us: int = 0  # when it was refused (Redis server time; this host's in degraded mode)


Verdict = Known | Hit | Follow | Admitted | Limited


@dataclass(frozen=True, slots=True)
class _Closing:
    """What `Admission.finish` writes: the answer and the end of the single-flight claim
    (generation or "" to not cache it, the answer, its TTL in ms, the claim to end), the job
    ledger's record, and the usage increments; None or empty for nothing."""

    answer: tuple[str, bytes, int, str] | None
    record: tuple[str, list[bytes]] | None
    usage: list[tuple[str, str]]

    @property
    def empty(self) -> bool:
        return self.answer is None and self.record is None and not self.usage
Arg = str | int | float | bytes


class Admission:
    def __init__(self, redis: RedisClient, keys: Keys, health: RedisHealth, *,
                 replicas_hint: int, prices: dict[str, Price],
                 ledger: JobLedger | None = None, wait_replicas: int = 0) -> None:
        self._redis = redis
        self._wait_replicas = wait_replicas
        self._keys = keys
        self.ledger = ledger  # None: no job claims, single-flight owners are not tracked
        self._health = health
        self._prices = prices
        self.local = LocalLimiter(replicas_hint)
        self._usage = PendingUsage()
        self._lookup = redis.register_script(LOOKUP_SCRIPT)
        self._limits = redis.register_script(LIMITS_SCRIPT)
        self._store = redis.register_script(STORE_SCRIPT)
        self._count_usage = redis.register_script(USAGE_SCRIPT)
        self._restamp = redis.register_script(RESTAMP_SCRIPT)
        health.on_recovery(self._write_back)

    async def admit(self, ask: Ask) -> Verdict:
        admission_id = uuid.uuid4().hex
        if self._health.usable():
            try:
                verdict = await self._shared(ask, admission_id)
            except RedisError as error:
                self._health.failed("admit", error)
            else:
                await self._health.succeeded()
                return verdict
        now_us = time_us()
        retry_us, worst, notices = self.local.check(list(ask.scopes), now_us)
        if worst is not None:
            return Limited(retry_us / 1e6, worst, tuple(notices), now_us)
        return Admitted(admission_id, None, False, tuple(notices), now_us)

    async def await_leader(self, ask: Ask, generation: str, deadline: float,
                           leader: str = "") -> bytes | Vanished | TimedOut:
        try:
            return await await_leader(self._redis, self._keys, kind=ask.kind, digest=ask.digest,
                                      generation=generation, deadline=deadline,
                                      leader=leader if self.ledger is not None else None)
        except RedisError as error:
            self._health.failed("single_flight", error)
            return "vanished"

    def restamp_due(self, ask: Ask, admitted: Admitted) -> bool:
        """Whether a call leaving now needs `restamp`. Not for an admission made in degraded
        mode, nor for a call leaving within RESTAMP_AFTER of its windows' edge margin after its
        admission: the margin already counts that much longer, and the round trip is saved (on
        an unloaded path the call leaves milliseconds after its admission)."""
        logs = [s for s in ask.scopes if s.measure != "budget"]
        if admitted.generation is None or not logs or not self._health.usable():
            return False
        waited_s = time.monotonic() - admitted.admitted_at
        return waited_s >= RESTAMP_AFTER * min(s.edge_margin_s for s in logs)

    async def restamp(self, ask: Ask, admitted: Admitted) -> None:
        """Count the admitted call from now, when it leaves for the provider (run alongside
        the call, not before it), when that is due (`restamp_due`)."""
        if not self.restamp_due(ask, admitted):
            return
        logs = [s for s in ask.scopes if s.measure != "budget"]
        keys = [self._keys.rate_log(s.scope, s.key) for s in logs]
        costs = ["count" if s.measure == "count" else s.charge(s.limit) for s in logs]
        try:
            await self._restamp(keys=keys, args=[admitted.id, *costs,
                                                 *(s.window_us for s in logs)])
        except RedisError as error:
            self._health.failed("restamp", error)

    async def finish(self, ask: Ask, admitted: Admitted | None, *, stored: bytes | None = None,
                     ttl_s: int = 0, use: Use | None = None,
                     record: tuple[str, list[bytes]] | None = None) -> None:
        """Store the answer (`ttl_s` 0: only handed to followers), end the claim, record the
        request's final events in the job ledger (`record`: its key and the encoded events),
        count usage: the three together (one pipeline, or concurrently on a cluster), each on its
        own hash tag. With Redis failing or in its cool-down, usage waits in memory and the rest
        is skipped."""
        closing = self._closing(admitted, stored, ttl_s, use, record)
        if closing.empty:
            return
        day = today()
        if not self._health.usable():
            self._usage.add(day, closing.usage)
            return
        results = await together(self._redis, self._closing_writes(ask, closing, day))
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is None:
            await self._health.succeeded()
            return
        if closing.usage and isinstance(results[-1], BaseException):  # usage is written last
            self._usage.add(day, closing.usage)
        if not isinstance(failure, RedisError):
            raise failure
        self._health.failed("finish", failure)

    def _closing(self, admitted: Admitted | None, stored: bytes | None, ttl_s: int,
                 use: Use | None, record: tuple[str, list[bytes]] | None) -> _Closing:
        """What `finish` has to write, decided before any I/O."""
        claim = self._flight_value(admitted.id) if admitted is not None and admitted.claimed else ""
        generation = admitted.generation if admitted is not None else None
        keep = stored is not None and generation is not None and (ttl_s > 0 or bool(claim))
        answer = ((generation or "") if keep else "", stored or b"",
                  (ttl_s or HANDOFF_TTL_S) * 1000, claim) if keep or claim else None
        return _Closing(answer=answer,
                        record=record if self.ledger is not None else None,
                        usage=increments(use, self._prices) if use is not None else [])

    def _closing_writes(self, ask: Ask, closing: _Closing, day: str) -> list[Call]:
        writes: list[Call] = []
        if closing.answer is not None:
            writes.append(script_call(
                self._store,
                [self._keys.cache_entry(ask.kind, ask.digest), self._keys.flight(ask.digest)],
                list(closing.answer)))
        if closing.record is not None and self.ledger is not None:
            writes.append(self.ledger.record_call(*closing.record))
        if closing.usage:
            writes.append(script_call(
                self._count_usage, [self._keys.usage_day(day)],
                [RETENTION_S, *(item for pair in closing.usage for item in pair)]))
        return writes

    # -- internals --------------------------------------------------------------------------

    async def _shared(self, ask: Ask, admission_id: str) -> Verdict:
        """The three steps of the module docstring; raises RedisError."""
        generation = ""
        if ask.digest:
            claim, generation = await self._claim_and_generation(ask)
            if claim is not None and claim.verdict != "claimed":
                return Known(claim)
            found = await self._look_up(ask, admission_id, generation)
            if found is not None:
                return found
        elif ask.job is not None:
            claim = await self._claim(ask)
            if claim is not None and claim.verdict != "claimed":
                return Known(claim)
        if not ask.scopes:
            return Admitted(admission_id, generation, ask.coalesce and bool(ask.digest), (),
                            time_us())
        keys: list[str] = []
        args: list[Arg] = [admission_id, WARN_AT]
        for scope in ask.scopes:
            keys += [self._keys.rate_log(scope.scope, scope.key),
                     self._keys.rate_sum(scope.scope, scope.key),
                     self._keys.rate_notice("warning", scope.scope, scope.key),
                     self._keys.rate_notice("exceeded", scope.scope, scope.key)]
            args += [scope.measure, scope.limit, scope.window_us, scope.charge(scope.limit)]
        raw = await self._check_limits(keys, args)
        now_us = _int(raw[1])
        claimed = ask.coalesce and bool(ask.digest)
        if _text(raw[0]) == "limited":
            if claimed:  # give the single-flight claim back: this admission does not run
                await self._store(keys=[self._keys.cache_entry(ask.kind, ask.digest),
                                        self._keys.flight(ask.digest)],
                                  args=["", b"", 0, self._flight_value(admission_id)])
            return Limited(_int(raw[2]) / 1e6, ask.scopes[_int(raw[3]) - 1],
                           self._notices(ask, raw[4:]), now_us)
        self.local.record(list(ask.scopes), now_us, pending=False)
        return Admitted(admission_id, generation, claimed, self._notices(ask, raw[2:]), now_us)

    async def _check_limits(self, keys: list[str], args: list[Arg]) -> list[object]:
        raw: list[object] = await self._limits(keys=keys, args=args)
        if not self._wait_replicas or _text(raw[0]) != "admit":
            return raw
        try:
            await self._replicated(keys[0])
        except RedisError:  # the master went away: its admission may be lost, ask again
            raw = await self._limits(keys=keys, args=args)
            if _text(raw[0]) == "admit":
                await self._replicated(keys[0])
        return raw

    async def _replicated(self, key: str) -> None:
        """WAIT until `wait_replicas` replicas of `key`'s master hold what it wrote (at most
        WAIT_REPLICAS_MS: with its replicas down the call goes out anyway)."""
        if isinstance(self._redis, RedisCluster):
            await self._redis.execute_command(
                "WAIT", self._wait_replicas, WAIT_REPLICAS_MS,
                target_nodes=self._redis.get_node_from_key(key))
        else:
            await self._redis.wait(self._wait_replicas, WAIT_REPLICAS_MS)

    async def _claim(self, ask: Ask) -> Claim | None:
        if self.ledger is None or ask.job is None:
            return None
        return await self.ledger.claim_now(ask.job)

    async def _claim_and_generation(self, ask: Ask) -> tuple[Claim | None, str]:
        """The job claim and the cache generations, sent together (store/together.py)."""
        key, fields = self._keys.cache_generations(), ["*", ask.kind]
        calls = [Call(lambda pipe: pipe.hmget(key, fields),
                      lambda: self._redis.hmget(key, fields))]
        if self.ledger is not None and ask.job is not None:
            calls.append(self.ledger.claim_call(ask.job))
        answers = await together(self._redis, calls)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        found = answers[0]
        generation = f"{_text(found[0] or b'0')}.{_text(found[1] or b'0')}"
        if self.ledger is None or ask.job is None:
            return None, generation
        return await self.ledger.claimed(ask.job, answers[1]), generation

    async def _look_up(self, ask: Ask, admission_id: str, generation: str) -> Verdict | None:
        """Hit or Follow; None on a miss (with the single-flight claimed when coalescing)."""
        if not (ask.read_cache or ask.coalesce):
            return None
        dead = ""
        while True:
            raw = await self._lookup(
                keys=[self._keys.cache_entry(ask.kind, ask.digest), self._keys.flight(ask.digest)],
                args=[int(ask.read_cache), int(ask.coalesce), generation, self._instance,
                      admission_id, max(1, int(ask.lease_s * 1000)), dead])
            verdict = _text(raw[0])
            if verdict == "hit":
                return Hit(_bytes(raw[1]))
            if verdict == "miss":
                return None
            leader = _text(raw[2])
            if self.ledger is None or dead or await self.ledger.alive(leader):
                return Follow(generation, leader)
            dead = leader  # its lease lapsed: ask again, taking its claim over

    def _flight_value(self, admission_id: str) -> str:
        """A single-flight claim names its owner, so a dead owner's claim can be taken over."""
        return f"{self._instance}/{admission_id}"

    @property
    def _instance(self) -> str:
        return self.ledger.instance_id if self.ledger is not None else ""

    @staticmethod
    def _notices(ask: Ask, flat: list[object]) -> tuple[Notice, ...]:
        notices = []
        for at in range(0, len(flat), 5):
            event: Literal["warning", "exceeded"] = (
                "warning" if _text(flat[at]) == "warning" else "exceeded")
            index, remaining, wait_us, limit = (_int(v) for v in flat[at + 1:at + 5])
            notices.append(Notice(event, ask.scopes[index - 1], limit, remaining, wait_us / 1e6))
        return tuple(notices)

    async def _write_back(self) -> None:
        """After an outage: the degraded-mode admissions into the shared logs, and usage."""
        pending = self.local.take_pending()
        try:
            if pending:
                await self._backfill(pending)
            await self._usage.flush(self._redis, self._keys)
        except RedisError as error:
            self.local.return_pending(pending)
            self._health.failed("write_back", error)

    async def _backfill(self, pending: list[Pending]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for item in pending:
                scope = item.scope
                log = self._keys.rate_log(scope.scope, scope.key)
                ttl_ms = scope.window_us // 1000 + 1
                if scope.measure == "sum":
                    pipe.zadd(log, {f"{item.member}:{item.cost}": item.at_us})
                    pipe.incrby(self._keys.rate_sum(scope.scope, scope.key), item.cost)
                    pipe.pexpire(self._keys.rate_sum(scope.scope, scope.key), ttl_ms)
                else:
                    pipe.zadd(log, {item.member: item.at_us})
                pipe.pexpire(log, ttl_ms)
            await pipe.execute()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | str | bytes) else 0
