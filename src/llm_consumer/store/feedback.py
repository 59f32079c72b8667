"""Provider feedback: the provider's own rate-limit headers and 429s tighten a model's budget.

OpenAI answers with `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (reset as a
duration: "1s", "6m0s", "20ms", "1h2m3.5s"). When the remaining budget is low (at most
TIGHT_SHARE of the limit, or the limit is unknown), it is stored in Redis as a budget hash
that expires at the reset, shared by every replica: the admission script then lets through
at most that many calls (and tokens) until the reset. A 429 empties the request budget until
`retry-after` (or the reset, or 1 s). Budgets only ever tighten while they last.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from redis.exceptions import RedisError

from llm_consumer.store.client import RedisClient
from llm_consumer.store.health import RedisHealth
from llm_consumer.store.keys import Keys

TIGHT_SHARE = 0.2
DEFAULT_429_WAIT_S = 1.0
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

# The provider calls this after every response: (model, response headers, HTTP status).
LimitFeedback = Callable[[str, Mapping[str, str], int], Awaitable[None]]

TIGHTEN_SCRIPT = """
-- KEYS[1] budget hash (left, limit); ARGV[1] remaining, ARGV[2] limit, ARGV[3] reset (ms)
local left = tonumber(redis.call('HGET', KEYS[1], 'left') or ARGV[1])
redis.call('HSET', KEYS[1], 'left', math.min(left, tonumber(ARGV[1])), 'limit', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


def parse_duration(text: str) -> float | None:
    """OpenAI's reset format in seconds: "1s" -> 1.0, "6m0s" -> 360.0, "20ms" -> 0.02;
    a bare number is seconds. None when unreadable."""
    raw = text.strip().lower()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        return None
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)


@dataclass(frozen=True, slots=True)
class Budget:
    what: str  # "requests" or "tokens"
    remaining: int
    limit: int  # 0 when not reported
    reset_s: float


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            value = float(headers[name]) * scale
        except (KeyError, ValueError):
            continue
        if math.isfinite(value) and value >= 0:
            return value
    return None


def budgets(headers: Mapping[str, str], status: int) -> list[Budget]:
    """The budgets worth enforcing from one response (none while the provider has room)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    found: dict[str, Budget] = {}
    for what in ("requests", "tokens"):
        remaining = _int(lowered.get(f"x-ratelimit-remaining-{what}"))
        reset = parse_duration(lowered.get(f"x-ratelimit-reset-{what}", ""))
        limit = _int(lowered.get(f"x-ratelimit-limit-{what}")) or 0
        if remaining is None or not reset:
            continue
        if not limit or remaining <= TIGHT_SHARE * limit:
            found[what] = Budget(what, max(0, remaining), limit, reset)
    if status == 429:
        wait = _retry_after(lowered) or max(
            (b.reset_s for b in found.values() if b.remaining == 0), default=DEFAULT_429_WAIT_S)
        limit = found["requests"].limit if "requests" in found else 0
        found["requests"] = Budget("requests", 0, limit, wait)
    return list(found.values())


class ProviderFeedback:
    def __init__(self, redis: RedisClient, keys: Keys, health: RedisHealth) -> None:
        self._redis = redis
        self._keys = keys
        self._health = health
        self._tighten = redis.register_script(TIGHTEN_SCRIPT)

    async def observe(self, model: str, headers: Mapping[str, str], status: int) -> None:
        """Tighten `model`'s shared budget from a provider response (a LimitFeedback)."""
        for budget in budgets(headers, status):
            key = model if budget.what == "requests" else f"{model}/tokens"
            if not self._health.usable():
                return
            try:
                await self._tighten(keys=[self._keys.rate_log("provider", key)],
                                    args=[budget.remaining, budget.limit,
                                          max(1, math.ceil(budget.reset_s * 1000))])
            except RedisError as error:
                self._health.failed("feedback", error)
                return
