"""Usage analytics: what a request adds, prices by longest prefix, reading it back by day."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
import redis.asyncio as aioredis

from llm_consumer.store.admission import Ask
from llm_consumer.store.guard import Guard
from llm_consumer.store.keys import Keys
from llm_consumer.store.usage import (
    Price,
    UsageRow,
    Use,
    increments,
    last_days,
    price_for,
    read_usage,
    today,
)

PRICES = {"gpt-5": Price(1.25, 10.0), "gpt-5-nano": Price(0.05, 0.4)}


@pytest.mark.parametrize(("model", "price"), [
    ("gpt-5-nano", Price(0.05, 0.4)), ("gpt-5-nano-2025-08-07", Price(0.05, 0.4)),
    ("gpt-5-2025-08-07", Price(1.25, 10.0)), ("gpt-4o", None), ("smollm2", None)])
def test_price_by_exact_name_else_longest_prefix(model: str, price: Price | None) -> None:
    assert price_for(PRICES, model) == price


def test_increments_of_a_paid_request_and_of_a_hit() -> None:
    paid = dict(increments(Use("gpt-5-nano", "world.location", "u1", 1000, 2000), PRICES))
    field = lambda metric: orjson.dumps(["gpt-5-nano", "world.location", "u1", metric]).decode()  # noqa: E731
    assert paid == {field("requests"): "1", field("prompt_tokens"): "1000",
                    field("completion_tokens"): "2000", field("cost_usd"): "0.850000000"}
    hit = dict(increments(Use("gpt-5-nano", "world.location", "u1", cache_hit=True), PRICES))
    assert hit == {field("requests"): "1", field("cache_hits"): "1"}
    assert len(increments(Use("local", "world.location", "u1", 5, 5), PRICES)) == 3, "no price"


async def test_usage_adds_up_per_day_model_kind_and_user(guard_factory: Callable[..., Guard],
                                                         redis: aioredis.Redis,
                                                         keys: Keys) -> None:
    guard = guard_factory(prices=PRICES)
    ask = Ask("world.location", "d", ())
    for use in (Use("gpt-5-nano", "world.location", "u1", 100, 200),
                Use("gpt-5-nano", "world.location", "u1", 300, 400),
                Use("gpt-5-nano", "world.location", "u1", cache_hit=True),
                Use("gpt-5-nano", "campaign.plot", "u2", 10, 20),
                Use("gpt-5", "campaign.plot", "u2", 1000, 1000)):
        await guard.admission.finish(ask, None, use=use)
    rows = await read_usage(redis, keys, [today()])
    assert rows[0] == UsageRow(today(), "gpt-5", "campaign.plot", "u2", 1, 1000, 1000, 11.25, 0)
    assert UsageRow(today(), "gpt-5-nano", "world.location", "u1", 3, 400, 600,
                    pytest.approx(0.26), 1) in rows
    assert [r.model for r in await read_usage(redis, keys, [today()], user="u2",
                                              model="gpt-5")] == ["gpt-5"]
    assert await read_usage(redis, keys, last_days(3, "2020-01-02")) == []
    assert last_days(3, "2020-01-02") == ["2020-01-02", "2020-01-01", "2019-12-31"]
    assert 0 < await redis.ttl(keys.usage_day(today())) <= 90 * 86400
