"""Everything that stands between a request and a paid provider call, built once by the app:
response cache, single-flight, rate limits (with provider feedback), usage and Redis health."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from redis.exceptions import RedisError

from llm_consumer.store.admission import Admission
from llm_consumer.store.cache import ResponseCache
from llm_consumer.store.client import RedisClient
from llm_consumer.store.feedback import LimitFeedback, ProviderFeedback
from llm_consumer.store.health import RedisHealth
from llm_consumer.store.jobs import JobLedger
from llm_consumer.store.keys import Keys
from llm_consumer.store.limits_config import LimitsConfig
from llm_consumer.store.singleflight import LocalFlights
from llm_consumer.store.usage import Price

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Policy:
    default_model: str  # the model a request without `model.name` gets
    singleflight_wait_s: float = 60.0  # how long followers wait for a leader
    inline_wait_s: float = 2.0  # a rate-limit wait up to this long happens in place


class Guard:
    def __init__(self, redis: RedisClient, keys: Keys, *, limits: LimitsConfig,
                 policy: Policy, cache_ttl_default_s: int, cache_ttls: Mapping[str, int],
                 prices: Mapping[str, Price], ledger: JobLedger | None = None,
                 health: RedisHealth | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.limits = limits
        self.policy = policy
        self.prices = dict(prices)
        self.health = health or RedisHealth()  # shared with the job ledger
        self.cache = ResponseCache(redis, keys, default_ttl_s=cache_ttl_default_s,
                                   ttls=cache_ttls)
        self.flights = LocalFlights()
        self.admission = Admission(redis, keys, self.health, replicas_hint=limits.replicas_hint,
                                   prices=dict(prices), ledger=ledger,
                                   wait_replicas=limits.wait_replicas)
        self._feedback = ProviderFeedback(redis, keys, self.health)
        self._unapplied: list[str | None] = []
        self.health.on_recovery(self._apply_invalidations)

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable (see store.health for what that changes)."""
        return self.health.degraded

    @property
    def observe(self) -> LimitFeedback:
        """For providers: `await guard.observe(model, response_headers, status)`."""
        return self._feedback.observe

    async def heartbeat(self, redis_ok: bool) -> None:
        """Follow the app's periodic Redis check, so degraded mode starts and ends with it
        even when no request is asking."""
        if redis_ok:
            await self.health.succeeded()
        else:
            self.health.failed("heartbeat", RedisError("liveness heartbeat failed"))

    async def invalidate(self, kind: str | None = None, *, event_id: str | None = None,
                         ) -> int | None:
        """Drop cached answers; with Redis down, remembered and applied when it returns."""
        try:
            removed = await self.cache.invalidate(kind, event_id=event_id)
        except RedisError as error:
            self.health.failed("cache_invalidate", error)
            self._unapplied.append(kind)
            return 0
        await self.health.succeeded()
        return removed

    async def _apply_invalidations(self) -> None:
        pending, self._unapplied = self._unapplied, []
        for kind in pending:
            removed = await self.invalidate(kind)
            log.info("cache.invalidated_after_outage", target_kind=kind, removed=removed)
