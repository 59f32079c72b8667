"""Admission: one script call decides a request's path before the provider is paid.

`admit` is a single EVALSHA of `admit.lua`: a cached answer (hit), a leader already computing
the same request elsewhere (follow), a place under every rate limit (admitted, recorded in all
scopes at once) or the time until one frees (limited). A request's first admission also makes
its job-ledger claim (`Ask.job`), so a request costs one round trip before the provider call;
a ledger that knows the request already (done, cancelled, running elsewhere) answers `Known`.
`finish` is a single EVALSHA of `finish.lua` after the answer: store it, end the claim, count
usage.

With Redis unreachable (see `health`), admission falls back to this replica's LocalLimiter,
nothing is cached or claimed, and usage adds up in memory; when Redis answers again, the
admissions and usage of the outage are written back so the shared windows stay honest.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llm_consumer.store.cache import HANDOFF_TTL_S
from llm_consumer.store.health import RedisHealth
from llm_consumer.store.jobs import CLAIM_JOB_FUNCTION, Claim, JobLedger, claim_from
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
from llm_consumer.store.usage import RETENTION_S, PendingUsage, Price, Use, increments, today

ADMIT_SCRIPT = CLAIM_JOB_FUNCTION + resources.files(__package__).joinpath("admit.lua").read_text()
FINISH_SCRIPT = resources.files(__package__).joinpath("finish.lua").read_text()
RESTAMP_SCRIPT = resources.files(__package__).joinpath("restamp.lua").read_text()


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


@dataclass(frozen=True, slots=True)
class Limited:
    retry_after_s: float
    scope: Scope  # the one that frees last
    notices: tuple[Notice, ...] = ()


Verdict = Known | Hit | Follow | Admitted | Limited
Arg = str | int | float | bytes


class Admission:
    def __init__(self, redis: aioredis.Redis, keys: Keys, health: RedisHealth, *,
                 replicas_hint: int, prices: dict[str, Price],
                 ledger: JobLedger | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self.ledger = ledger  # None: no job claims, single-flight owners are not tracked
        self._health = health
        self._prices = prices
        self.local = LocalLimiter(replicas_hint)
        self._usage = PendingUsage()
        self._admit = redis.register_script(ADMIT_SCRIPT)
        self._finish = redis.register_script(FINISH_SCRIPT)
        self._restamp = redis.register_script(RESTAMP_SCRIPT)
        health.on_recovery(self._write_back)

    async def admit(self, ask: Ask) -> Verdict:
        admission_id = uuid.uuid4().hex
        if self._health.usable():
            keys, args = self._script_input(ask, admission_id)
            try:
                raw = await self._admit(keys=keys, args=args)
            except RedisError as error:
                self._health.failed("admit", error)
            else:
                await self._health.succeeded()
                return self._decode(ask, admission_id, raw)
        now_us = time_us()
        retry_us, worst, notices = self.local.check(list(ask.scopes), now_us)
        if worst is not None:
            return Limited(retry_us / 1e6, worst, tuple(notices))
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

    async def restamp(self, ask: Ask, admitted: Admitted) -> None:
        """Count the admitted call from now, when it leaves for the provider (run alongside
        the call, not before it). A no-op for an admission made in degraded mode."""
        logs = [s for s in ask.scopes if s.measure != "budget"]
        if admitted.generation is None or not logs or not self._health.usable():
            return
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
        request's final events in the job ledger (`record`: its id and the encoded events),
        count usage."""
        pairs = increments(use, self._prices) if use is not None else []
        day = today()
        claim = self._flight_value(admitted.id) if admitted is not None and admitted.claimed else ""
        generation = admitted.generation if admitted is not None else None
        store = stored is not None and generation is not None and (ttl_s > 0 or bool(claim))
        recorded = (self.ledger.record_input(*record)
                    if record is not None and self.ledger is not None else None)
        if not (store or claim or pairs or recorded):
            return
        if not self._health.usable():
            self._usage.add(day, pairs)
            return
        # Without a record: a placeholder key, and '' for the events (finish.lua writes none).
        job_key, job_args = recorded or (self._keys.usage_day(day), ["", "", 0])
        keys = [self._keys.cache_entry(ask.kind, ask.digest), self._keys.flight(ask.digest),
                self._keys.usage_day(day), job_key]
        args: list[Arg] = [(generation or "") if store else "", stored or b"",
                           (ttl_s or HANDOFF_TTL_S) * 1000, claim, RETENTION_S, *job_args,
                           *(item for pair in pairs for item in pair)]
        try:
            await self._finish(keys=keys, args=args)
        except RedisError as error:
            self._health.failed("finish", error)
            self._usage.add(day, pairs)
        else:
            await self._health.succeeded()

    # -- internals --------------------------------------------------------------------------

    def _flight_value(self, admission_id: str) -> str:
        """A single-flight claim names its owner, so a dead owner's claim can be taken over."""
        return f"{self._instance}/{admission_id}"

    @property
    def _instance(self) -> str:
        return self.ledger.instance_id if self.ledger is not None else ""

    def _script_input(self, ask: Ask, admission_id: str) -> tuple[list[str], list[Arg]]:
        flight = self._keys.flight(ask.digest)
        keys = [self._keys.cache_entry(ask.kind, ask.digest), self._keys.cache_generations(),
                flight]
        args: list[Arg] = [int(ask.read_cache), int(ask.coalesce), ask.kind, admission_id,
                           max(1, int(ask.lease_s * 1000)), WARN_AT]
        if self.ledger is not None and ask.job is not None:
            job_keys, job_args = self.ledger.claim_input(ask.job)
            keys += job_keys
            args += [1, *job_args]
        else:  # no claim; the liveness prefix still tells followers whether a leader lives
            alive = self._keys.instance_prefix() if self.ledger is not None else ""
            keys += [flight, flight]  # unused placeholders
            args += [0, self._instance, alive, 0]
        for scope in ask.scopes:
            keys += [self._keys.rate_log(scope.scope, scope.key),
                     self._keys.rate_sum(scope.scope, scope.key),
                     self._keys.rate_notice("warning", scope.scope, scope.key),
                     self._keys.rate_notice("exceeded", scope.scope, scope.key)]
            args += [scope.measure, scope.limit, scope.window_us, scope.charge(scope.limit)]
        return keys, args

    def _decode(self, ask: Ask, admission_id: str, raw: list[object]) -> Verdict:
        verdict = _text(raw[0])
        if verdict in ("done", "cancelled", "busy"):
            return Known(claim_from(verdict, raw[1]))
        if verdict == "hit":
            return Hit(_bytes(raw[1]))
        if verdict == "follow":
            return Follow(_text(raw[1]), _text(raw[3]))
        now_us = _int(raw[1])
        if verdict == "limited":
            return Limited(_int(raw[2]) / 1e6, ask.scopes[_int(raw[3]) - 1],
                           self._notices(ask, raw[4:]))
        self.local.record(list(ask.scopes), now_us, pending=False)
        return Admitted(admission_id, _text(raw[2]), ask.coalesce, self._notices(ask, raw[3:]),
                        now_us)

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
