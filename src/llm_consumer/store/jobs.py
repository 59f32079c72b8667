"""The job ledger: idempotency by event id, surviving crashes.

A record is `running` (owned by an instance) or `done` (with the events it produced). An
instance proves it is alive with a short-lived key it refreshes; a `running` record whose owner
has no live key was left by a dead worker and may be taken over. When Redis is unreachable the
ledger says so (`degraded`) and lets work proceed: a duplicate is cheaper than a lost request.
It follows the same RedisHealth as the guard, so while Redis hangs (a paused server answers
nothing until the socket time-out) requests do not each wait that time-out out again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Literal, TypeVar, cast

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from llm_consumer.store.health import RedisHealth
from llm_consumer.store.keys import Keys

log = structlog.get_logger(__name__)

Verdict = Literal["claimed", "done", "busy", "cancelled"]
Arg = str | int | bytes
T = TypeVar("T")


def _script(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


CLAIM_JOB_FUNCTION = _script("claim_job.lua")  # shared with admit.lua
CLAIM_SCRIPT = CLAIM_JOB_FUNCTION + _script("claim.lua")
RELEASE_SCRIPT = _script("release.lua")


@dataclass(frozen=True, slots=True)
class Claim:
    verdict: Verdict
    stored_events: tuple[bytes, ...] = ()
    owner: str | None = None
    degraded: bool = False


class AlreadyClaimed(Exception):
    """Raised out of a job whose ledger claim (made with its admission) found the request
    done, cancelled or running elsewhere: the consumer settles it from `claim`."""

    def __init__(self, claim: Claim) -> None:
        super().__init__(claim.verdict)
        self.claim = claim


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
        redis: aioredis.Redis,
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

    @property
    def instance_id(self) -> str:
        return self._instance

    def record_input(self, request_id: str, events: list[bytes]) -> tuple[str, list[Arg]]:
        """Key and arguments of a `done` record (finish.lua writes it with the request's
        other after-work; `finish` below on its own)."""
        return (self._keys.job(request_id),
                [stored_events(events), self._instance, self._result_ttl_s])

    def claim_input(self, request_id: str) -> tuple[list[str], list[Arg]]:
        """Keys and arguments of claim_job.lua for `request_id` (also used by admit.lua)."""
        return ([self._keys.job(request_id), self._keys.cancelled(request_id)],
                [self._instance, self._keys.instance_prefix(), self._result_ttl_s])

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

    async def claim(self, request_id: str) -> Claim:
        keys, args = self.claim_input(request_id)
        answer = await self._call("claim", lambda: self._claim(keys=keys, args=args))
        if answer is None:
            return Claim("claimed", degraded=True)
        verdict, payload = answer
        return claim_from(verdict, payload)

    async def finish(self, request_id: str, events: list[bytes]) -> None:
        """Record the final events so a redelivery re-publishes them instead of regenerating."""
        key, (stored, _, _) = self.record_input(request_id, events)

        async def write() -> object:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={"state": "done", "owner": self._instance, "events": stored})
                pipe.expire(key, self._result_ttl_s)
                return await pipe.execute()

        await self._call("finish", write)

    async def release(self, request_id: str) -> None:
        """Forget this instance's unfinished claim so a retry copy, on any replica, may claim
        it again (a finished record, or another instance's claim, stays)."""
        await self._call("release", lambda: self._release(keys=[self._keys.job(request_id)],
                                                          args=[self._instance]))

    async def mark_cancelled(self, request_id: str) -> None:
        await self._call("cancel", lambda: self._redis.set(
            self._keys.cancelled(request_id), "1", ex=self._result_ttl_s))

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
