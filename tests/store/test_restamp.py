"""A provider call's entries in the rate-limit logs count from when it leaves, not from its
admission, once the gap is more than the edge margin allows for; a call leaving at once keeps
its admission's stamp and costs no round trip (real Redis)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from llm_consumer.store.admission import Admitted, Ask
from llm_consumer.store.keys import Keys
from llm_consumer.store.limits_config import ModelRates, Rate
from llm_consumer.store.ratelimit import model_scopes
from tests.store.conftest import limits, make_guard


async def stamps_after(redis: aioredis.Redis, keys: Keys, window_s: float,
                       wait_s: float) -> tuple[int, float]:
    """(the admission's stamp, how far restamp moved it in ms) for a call leaving `wait_s`
    after its admission, under a requests limit per `window_s`."""
    model = f"model-{window_s:g}s"
    guard = make_guard(redis, keys, limits=limits(models={model: ModelRates(
        requests=Rate(1000, window_s))}))
    scopes = tuple(model_scopes(guard.limits, model, 10))
    ask = Ask("character.backstory", "", scopes)
    admitted = await guard.admission.admit(ask)
    assert isinstance(admitted, Admitted)
    await asyncio.sleep(wait_s)
    await guard.admission.restamp(ask, admitted)
    log = keys.rate_log(scopes[0].scope, scopes[0].key)
    score = await redis.zscore(log, admitted.id)
    assert score is not None
    return admitted.at_us, (score - admitted.at_us) / 1000


async def test_a_call_leaving_later_than_the_margin_allows_is_counted_from_then(
        redis: aioredis.Redis, keys: Keys) -> None:
    _, moved_ms = await stamps_after(redis, keys, 60, 0.3)  # margin 200 ms: restamped after 50
    assert moved_ms >= 290
    _, moved_ms = await stamps_after(redis, keys, 1, 0.05)  # margin 30 ms: after 7.5
    assert moved_ms >= 45


async def test_a_call_leaving_at_once_keeps_its_admission_stamp(
        redis: aioredis.Redis, keys: Keys) -> None:
    before = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
    _, moved_ms = await stamps_after(redis, keys, 60, 0.0)
    after = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
    assert moved_ms == 0
    assert after - before == 1  # the admission's script alone
