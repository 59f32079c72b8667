"""The job ledger: idempotency by event id, surviving crashes.

A record is `running` (owned by an instance) or `done` (with the events it produced). An
instance proves it is alive with a short-lived key it refreshes; a `running` record whose owner
has no live key was left by a dead worker and may be taken over. A request is claimed with the
admission's first question (store/admission.py); when Redis is unreachable it goes ahead
unclaimed: a duplicate is cheaper than a lost request. The ledger follows the same RedisHealth
as the guard, so while Redis hangs (a paused server answers nothing until the socket time-out)
requests do not each wait that time-out out again.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, TypeVar, cast

import orjson
import structlog
from redis.exceptions import RedisError

from llm_consumer.store.client import RedisClient
from llm_consumer.store.health import RedisHealth
from llm_consumer.store.keys import Keys
from llm_consumer.store.together import Call, script_call

log = structlog.get_logger(__name__)

Verdict = Literal["claimed", "done", "busy", "cancelled"]
Arg = str | int | bytes
T = TypeVar("T")


def _script(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


CLAIM_SCRIPT = _script("claim_job.lua") + _script("claim.lua")
RELEASE_SCRIPT = _script("release.lua")
RECORD_SCRIPT = """
-- KEYS[1] job record; ARGV[1] this instance, ARGV[2] final events (JSON array), ARGV[3] ttl (s)
redis.call('HSET', KEYS[1], 'state', 'done', 'owner', ARGV[1], 'events', ARGV[2])
return redis.call('EXPIRE', KEYS[1], ARGV[3])
"""


@dataclass(frozen=True, slots=True)
class Claim:
    verdict: Verdict
    stored_events: tuple[bytes, ...] = ()
    owner: str | None = None


def claim_from(verdict: object, payload: object) -> Claim:
    """The Claim that claim_job.lua's `{verdict, payload}` describes."""
    name = cast(Verdict, verdict.decode() if isinstance(verdict, bytes) else str(verdict))
    if name == "done":
        return Claim("done", stored_events=tuple(
            orjson.dumps(e) for e in orjson.loads(cast(bytes | str, payload))))
    if name == "busy":
        return Claim("busy", owner=payload.decode() if isinstance(payload, bytes) else str(payload))
    return Claim(name)


def stored_events(events: list[bytes]) -> bytes:
    """A request's final events as its job record keeps them: one JSON array."""
    return b"[" + b",".join(events) + b"]"


class JobLedger:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        instance_id: str,
        result_ttl_s: int,
        lease_s: int,
        health: RedisHealth | None = None,
    ) -> None:
        self._redis = redis
        self._health = health or RedisHealth()
        self._keys = keys
        self._instance = instance_id
        self._result_ttl_s = result_ttl_s
        self._lease_s = lease_s
        self._claim = redis.register_script(CLAIM_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)
        self._record = redis.register_script(RECORD_SCRIPT)

    @property
    def instance_id(self) -> str:
        return self._instance

    def claim_input(self, request_id: str, dead: str = "") -> tuple[list[str], list[Arg]]:
        """Keys and arguments of claim.lua for `request_id` (`dead`: an owner whose lease
        lapsed, whose claim may be taken over)."""
        return ([self._keys.job(request_id), self._keys.cancelled(request_id)],
                [self._instance, dead, self._result_ttl_s])

    async def alive(self, instance_id: str) -> bool:
        """Whether `instance_id`'s liveness lease runs (raises RedisError)."""
        return bool(await self._redis.exists(self._keys.instance(instance_id)))

    async def claim_now(self, request_id: str) -> Claim:
        """claim.lua, asking again when the request is busy on an instance whose lease lapsed
        (that takes it over). Raises RedisError."""
        keys, args = self.claim_input(request_id)
        return await self.claimed(request_id, await self._claim(keys=keys, args=args))

    def claim_call(self, request_id: str) -> Call:
        """claim.lua's first ask, to send beside other calls; `claimed` reads its answer."""
        keys, args = self.claim_input(request_id)
        return script_call(self._claim, keys, args)

    async def claimed(self, request_id: str, raw: list[Any]) -> Claim:
        """The claim claim.lua answered, taking over a busy one whose owner's lease lapsed."""
        claim = claim_from(*raw)
        if claim.verdict == "busy" and claim.owner and not await self.alive(claim.owner):
            keys, args = self.claim_input(request_id, dead=claim.owner)
            claim = claim_from(*await self._claim(keys=keys, args=args))
        return claim

    async def heartbeat(self) -> bool:
        """Refresh this instance's liveness key; False when Redis is unreachable."""
        try:
            await self._redis.set(self._keys.instance(self._instance), "1", ex=self._lease_s)
        except RedisError as error:
            log.warning("redis.unavailable", during="heartbeat", error=str(error))
            return False
        return True

    async def retire(self) -> None:
        """Drop the liveness key at a clean shutdown so peers may take over at once."""
        with contextlib.suppress(RedisError):
            await self._redis.delete(self._keys.instance(self._instance))

    async def finish(self, request_id: str, events: list[bytes]) -> None:
        """Record the final events so a redelivery re-publishes them instead of regenerating."""
        await self._call("finish", lambda: self.record(request_id, events))

    async def record(self, request_id: str, events: list[bytes]) -> None:
        """The `done` record with its ttl, in one script call (raises RedisError)."""
        await self.record_call(request_id, events).alone()

    def record_call(self, request_id: str, events: list[bytes]) -> Call:
        """The `done` record as a call to send beside others (store/together.py)."""
        return script_call(self._record, [self._keys.job(request_id)],
                           [self._instance, stored_events(events), self._result_ttl_s])

    async def release(self, request_id: str) -> None:
        """Forget this instance's unfinished claim so a retry copy, on any replica, may claim
        it again (a finished record, or another instance's claim, stays)."""
        await self._call("release", lambda: self._release(keys=[self._keys.job(request_id)],
                                                          args=[self._instance]))

    async def mark_cancelled(self, request_id: str) -> None:
        await self._call("cancel", lambda: self._redis.set(
            self._keys.cancelled(request_id), "1", ex=self._result_ttl_s))

    async def first_to_refuse(self, body: bytes) -> bool:
        """True for the first replica to refuse this control event (every replica gets a copy
        of a control event); also True when Redis cannot tell (answered twice, not never)."""
        key = self._keys.control_refused(hashlib.sha256(body).hexdigest())

        async def mark() -> bool:  # SET NX answers None when the key was there already
            return bool(await self._redis.set(key, self._instance, nx=True,
                                              ex=self._result_ttl_s))

        first = await self._call("refuse", mark)
        return first is None or first

    async def _call(self, during: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """`call()`, or None when Redis failed or is in its cool-down after a failure."""
        if not self._health.usable():
            return None
        try:
            answer = await call()
        except RedisError as error:
            self._health.failed(during, error)
            return None
        await self._health.succeeded()
        return answer
