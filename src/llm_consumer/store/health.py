"""Whether Redis answers, shared by the cache, single-flight, rate limits and usage.

After a failure Redis is left alone for `cooldown_s` (requests take the degraded path without
waiting on a dead socket), then one call per cool-down tries it again; the first success ends
the degraded mode and runs the recovery hooks (write back what was kept in memory meanwhile).
Each transition is logged once: `redis.unavailable`, `redis.recovered`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Literal

import structlog
from redis.exceptions import RedisError

from llm_consumer.store.client import misconfiguration

log = structlog.get_logger(__name__)

DEGRADED_MODE = ("response cache and cross-replica single-flight off; rate limits held in "
                 "this replica's memory at 1/RATE_LIMIT_REPLICAS_HINT of each limit, "
                 "rounded down")


class RedisHealth:
    def __init__(self, cooldown_s: float = 1.0) -> None:
        self._cooldown_s = cooldown_s
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._hooks: list[Callable[[], Awaitable[None]]] = []

    @property
    def degraded(self) -> bool:
        return self._down_since is not None

    @property
    def status(self) -> Literal["ok", "degraded"]:
        return "degraded" if self.degraded else "ok"

    def usable(self) -> bool:
        """True when Redis is up, and for one caller per cool-down while it is down."""
        if self._down_since is None:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        self._retry_at = now + self._cooldown_s
        return True

    def on_recovery(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._hooks.append(hook)

    def failed(self, during: str, error: Exception) -> None:
        now = time.monotonic()
        self._retry_at = now + self._cooldown_s
        wrong = misconfiguration(error) if isinstance(error, RedisError) else None
        if wrong is not None:  # not an outage: say so on every occurrence, loudly
            log.error("redis.misconfigured", during=during, error=wrong)
        if self._down_since is None:
            self._down_since = now
            log.warning("redis.unavailable", during=during, error=str(error),
                        degraded_mode=DEGRADED_MODE)

    async def succeeded(self) -> None:
        if self._down_since is None:
            return
        down_s = time.monotonic() - self._down_since
        self._down_since = None
        log.info("redis.recovered", down_s=round(down_s, 1))
        for hook in self._hooks:
            await hook()
