"""The admission script against the real Redis: exact windows, all-or-nothing across scopes,
token budgets, notices throttled to one per second, and the in-process fallback limiter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as aioredis

from llm_consumer.store.admission import Admitted, Ask, Limited
from llm_consumer.store.guard import Guard
from llm_consumer.store.keys import Keys
from llm_consumer.store.ratelimit import LocalLimiter, Scope


def count(key: str, limit: int, window_s: float, scope: str = "operation") -> Scope:
    return Scope(scope, key, "count", limit, window_s)  # type: ignore[arg-type]


def tokens(key: str, limit: int, window_s: float, cost: int) -> Scope:
    return Scope("model", key, "sum", limit, window_s, cost)


def ask(*scopes: Scope) -> Ask:
    return Ask("character.backstory", "digest", tuple(scopes))


async def test_a_window_admits_exactly_its_limit_then_says_when(
        guard_factory: Callable[..., Guard]) -> None:
    guard = guard_factory()
    scope = count("text", 3, 1.0)
    verdicts = [await guard.admission.admit(ask(scope)) for _ in range(4)]
    assert [type(v) for v in verdicts] == [Admitted, Admitted, Admitted, Limited]
    limited = verdicts[3]
    assert isinstance(limited, Limited) and limited.scope == scope
    assert 0.9 < limited.retry_after_s <= 1.03  # the first entry leaves the window (+3% margin)
    await asyncio.sleep(limited.retry_after_s)
    assert isinstance(await guard.admission.admit(ask(scope)), Admitted)


async def test_scopes_are_checked_together_and_recorded_all_or_nothing(
        guard_factory: Callable[..., Guard], redis: aioredis.Redis, keys: Keys) -> None:
    guard = guard_factory()
    wide, narrow = count("all", 10, 60, "global"), count("u1", 1, 60, "user")
    assert isinstance(await guard.admission.admit(ask(wide, narrow)), Admitted)
    for _ in range(3):
        assert isinstance(await guard.admission.admit(ask(wide, narrow)), Limited)
    assert await redis.zcard(keys.rate_log("global", "all")) == 1, "refused: not recorded"
    assert isinstance(await guard.admission.admit(ask(wide, count("u2", 1, 60, "user"))),
                      Admitted)
    assert await redis.zcard(keys.rate_log("global", "all")) == 2


async def test_token_budget_sums_costs_and_a_huge_request_still_passes_alone(
        guard_factory: Callable[..., Guard]) -> None:
    guard = guard_factory()
    assert isinstance(await guard.admission.admit(ask(tokens("m/tokens", 1000, 1, 400))),
                      Admitted)
    assert isinstance(await guard.admission.admit(ask(tokens("m/tokens", 1000, 1, 400))),
                      Admitted)
    limited = await guard.admission.admit(ask(tokens("m/tokens", 1000, 1, 400)))
    assert isinstance(limited, Limited)
    await asyncio.sleep(limited.retry_after_s)
    assert isinstance(await guard.admission.admit(ask(tokens("m/tokens", 1000, 1, 400))),
                      Admitted), "the first 400 left the window: 800 used"
    huge = tokens("big/tokens", 1000, 1, 50_000)
    assert isinstance(await guard.admission.admit(ask(huge)), Admitted)
    assert isinstance(await guard.admission.admit(ask(huge)), Limited)


async def test_warning_at_80_percent_and_exceeded_at_most_once_a_second(
        guard_factory: Callable[..., Guard]) -> None:
    guard = guard_factory()
    scope = count("theme", 5, 30)
    notices = []
    for _ in range(8):
        verdict = await guard.admission.admit(ask(scope))
        assert isinstance(verdict, Admitted | Limited)
        notices += [(n.event, n.remaining, n.limit) for n in verdict.notices]
    assert notices == [("warning", 1, 5), ("exceeded", 0, 5)], "one of each in the second"
    await asyncio.sleep(1.05)
    again = await guard.admission.admit(ask(scope))
    assert isinstance(again, Limited)
    [exceeded] = again.notices
    assert exceeded.event == "exceeded" and 28 < exceeded.retry_after_s <= 30.6


def test_local_limiter_keeps_a_share_and_says_when() -> None:
    local = LocalLimiter(replicas_hint=3)
    scope = count("text", 10, 1.0)
    start = 1_000_000_000
    admitted = [local.check([scope], start + i)[1] is None for i in range(5)]
    assert admitted == [True, True, True, False, False], "10 // 3 = 3 per replica"
    wait_us, worst, notices = local.check([scope], start + 10)
    assert worst == scope and wait_us == 1_030_000 - 10
    assert [n.event for n in notices] == [], "exceeded was already told this second"
    assert local.check([scope], start + 1_030_001)[1] is None
    assert len(local.take_pending()) == 4


def test_a_limit_smaller_than_the_replica_count_holds_in_degraded_mode() -> None:
    """2 per window across 3 replicas: each replica's share is 0, so together they admit
    nothing until Redis is back (never 3, one each)."""
    replicas = [LocalLimiter(replicas_hint=3) for _ in range(3)]
    scope = count("model", 2, 5.0)
    admitted = [r.check([scope], 1_000_000 + i)[1] is None for i, r in enumerate(replicas)]
    assert admitted == [False, False, False]
    assert sum(len(r.take_pending()) for r in replicas) == 0


def test_local_limiter_mirrors_shared_admissions() -> None:
    """What Redis admitted for this replica counts in its share from the first moment of an
    outage, so an outage does not open a fresh window."""
    local = LocalLimiter(replicas_hint=2)
    scope = count("text", 4, 10.0)
    local.record([scope], 5_000_000, pending=False)
    local.record([scope], 5_000_001, pending=False)
    assert local.check([scope], 5_000_002)[1] == scope
    assert local.take_pending() == []
