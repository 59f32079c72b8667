"""The job ledger: idempotency by event id, surviving crashes.

A record is `running` (owned by an instance) or `done` (with the events it produced). An
instance proves it is alive with a short-lived key it refreshes; a `running` record whose owner
has no live key was left by a dead worker and may be taken over. When Redis is unreachable the
ledger says so (`degraded`) and lets work proceed: a duplicate is cheaper than a lost request.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from importlib import resources
from typing import Literal, cast

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from llm_consumer.store.keys import Keys

log = structlog.get_logger(__name__)

Verdict = Literal["claimed", "done", "busy", "cancelled"]
CLAIM_SCRIPT = resources.files(__package__).joinpath("claim.lua").read_text()


@dataclass(frozen=True, slots=True)
class Claim:
    verdict: Verdict
    stored_events: tuple[bytes, ...] = ()
    owner: str | None = None
    degraded: bool = False


class JobLedger:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        *,
        instance_id: str,
        result_ttl_s: int,
        lease_s: int,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._instance = instance_id
        self._result_ttl_s = result_ttl_s
        self._lease_s = lease_s
        self._claim = redis.register_script(CLAIM_SCRIPT)

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
        try:
            verdict, payload = await self._claim(
                keys=[self._keys.job(request_id), self._keys.cancelled(request_id)],
                args=[self._instance, self._keys.instance_prefix(), self._result_ttl_s],
            )
        except RedisError as error:
            log.warning("redis.unavailable", during="claim", error=str(error))
            return Claim("claimed", degraded=True)
        verdict = cast(Verdict, verdict.decode() if isinstance(verdict, bytes) else verdict)
        if verdict == "done":
            events = tuple(orjson.dumps(e) for e in orjson.loads(payload))
            return Claim("done", stored_events=events)
        if verdict == "busy":
            return Claim("busy", owner=payload.decode() if isinstance(payload, bytes) else payload)
        return Claim(verdict)

    async def finish(self, request_id: str, events: list[bytes]) -> None:
        """Record the final events so a redelivery re-publishes them instead of regenerating."""
        stored = b"[" + b",".join(events) + b"]"
        key = self._keys.job(request_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={"state": "done", "owner": self._instance, "events": stored})
                pipe.expire(key, self._result_ttl_s)
                await pipe.execute()
        except RedisError as error:
            log.warning("redis.unavailable", during="finish", error=str(error))

    async def release(self, request_id: str) -> None:
        """Forget an unfinished claim so a retry copy, on any replica, may claim it again."""
        try:
            await self._redis.delete(self._keys.job(request_id))
        except RedisError as error:
            log.warning("redis.unavailable", during="release", error=str(error))

    async def mark_cancelled(self, request_id: str) -> None:
        try:
            await self._redis.set(self._keys.cancelled(request_id), "1", ex=self._result_ttl_s)
        except RedisError as error:
            log.warning("redis.unavailable", during="cancel", error=str(error))
