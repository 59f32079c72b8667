"""Usage analytics per UTC day, model, kind and user: requests, prompt and completion tokens,
estimated cost (from a price table, USD per 1,000 tokens) and cache hits.

One Redis hash per day, a field per (model, kind, user, metric), kept USAGE_RETENTION_DAYS.
The increments of a request travel beside the call that stores its answer (`Admission.finish`);
while Redis is down they add up in memory and are written back when it returns.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import orjson

from llm_consumer.store.client import RedisClient
from llm_consumer.store.keys import Keys

USAGE_RETENTION_DAYS = 90
RETENTION_S = USAGE_RETENTION_DAYS * 86_400
METRICS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd", "cache_hits")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1,000 tokens."""

    prompt: float
    completion: float


def price_for(prices: Mapping[str, Price], model: str) -> Price | None:
    """Exact name, else the longest configured prefix (`gpt-5-nano` prices
    `gpt-5-nano-2025-08-07`, the snapshot name the provider reports)."""
    if model in prices:
        return prices[model]
    matches = [name for name in prices if model.startswith(name)]
    return prices[max(matches, key=len)] if matches else None


@dataclass(frozen=True, slots=True)
class Use:
    """One answered request, as counted."""

    model: str
    kind: str
    user: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hit: bool = False


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def increments(use: Use, prices: Mapping[str, Price]) -> list[tuple[str, str]]:
    """(hash field, increment) pairs; an increment with a '.' is a float (HINCRBYFLOAT)."""
    def field(metric: str) -> str:
        return orjson.dumps([use.model, use.kind, use.user, metric]).decode()

    pairs = [(field("requests"), "1")]
    if use.cache_hit:
        return [*pairs, (field("cache_hits"), "1")]
    pairs += [(field("prompt_tokens"), str(use.prompt_tokens)),
              (field("completion_tokens"), str(use.completion_tokens))]
    price = price_for(prices, use.model)
    if price is not None:
        cost = (use.prompt_tokens * price.prompt + use.completion_tokens * price.completion) / 1000
        pairs.append((field("cost_usd"), f"{cost:.9f}"))
    return pairs


class PendingUsage:
    """Increments made while Redis was unreachable, per day."""

    def __init__(self) -> None:
        self._days: defaultdict[str, defaultdict[str, float]] = defaultdict(_counts)
        self._floats: set[str] = set()

    def add(self, day: str, pairs: Iterable[tuple[str, str]]) -> None:
        for name, value in pairs:
            if "." in value:
                self._floats.add(name)
            self._days[day][name] += float(value)

    async def flush(self, redis: RedisClient, keys: Keys) -> None:
        """Write the increments back; on failure they stay pending (the error propagates)."""
        days, self._days = self._days, defaultdict(_counts)
        if not days:
            return
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for day, counts in days.items():
                    for name, value in counts.items():
                        if name in self._floats:
                            pipe.hincrbyfloat(keys.usage_day(day), name, value)
                        else:
                            pipe.hincrby(keys.usage_day(day), name, int(value))
                    pipe.expire(keys.usage_day(day), RETENTION_S)
                await pipe.execute()
        except BaseException:
            for day, counts in days.items():
                self.add(day, ((n, repr(v) if n in self._floats else str(int(v)))
                               for n, v in counts.items()))
            raise


def _counts() -> defaultdict[str, float]:
    return defaultdict(float)


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: str
    model: str
    kind: str
    user: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cache_hits: int = 0


def last_days(count: int, until: str | None = None) -> list[str]:
    end = date.fromisoformat(until) if until else datetime.now(UTC).date()
    return [(end - timedelta(days=n)).isoformat() for n in range(count)]


async def read_usage(redis: RedisClient, keys: Keys, days: Iterable[str], *,
                     user: str | None = None, model: str | None = None) -> list[UsageRow]:
    """Rows per (day, model, kind, user), filtered, sorted by day (newest first) then cost."""
    rows: list[UsageRow] = []
    for day in days:
        grouped: defaultdict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
        for name, value in (await redis.hgetall(keys.usage_day(day))).items():
            m, k, u, metric = orjson.loads(name)
            if (user is None or u == user) and (model is None or m == model):
                grouped[(m, k, u)][metric] = float(value)  # metrics: see METRICS
        rows += sorted(
            (UsageRow(day, m, k, u, requests=int(v.get("requests", 0)),
                      prompt_tokens=int(v.get("prompt_tokens", 0)),
                      completion_tokens=int(v.get("completion_tokens", 0)),
                      cost_usd=v.get("cost_usd", 0.0), cache_hits=int(v.get("cache_hits", 0)))
             for (m, k, u), v in grouped.items()),
            key=lambda r: (-r.cost_usd, -r.requests, r.model, r.kind, r.user))
    return rows
