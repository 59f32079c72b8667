"""Provider feedback: OpenAI's rate-limit headers and 429s tighten a model's shared budget."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from llm_consumer.events import catalog
from llm_consumer.store.admission import Admitted, Ask, Limited
from llm_consumer.store.feedback import Budget, budgets, parse_duration
from llm_consumer.store.guard import Guard
from llm_consumer.store.ratelimit import model_scopes
from tests.bus.test_cache_e2e import SHEET, result_of
from tests.bus.test_limits_e2e import sheet
from tests.conftest import Service
from tests.fakes.openai_server import reply
from tests.hub import tap

# As OpenAI sends them (names case-insensitive, reset as a Go duration).
TIGHT = {"X-RateLimit-Limit-Requests": "60", "X-RateLimit-Remaining-Requests": "1",
         "X-RateLimit-Reset-Requests": "1s", "x-ratelimit-limit-tokens": "150000",
         "x-ratelimit-remaining-tokens": "149000", "x-ratelimit-reset-tokens": "0s"}


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0s", 0.0),
    ("2.5", 2.5), ("59.016s", 59.016), ("abc", None), ("1x", None), ("", None), ("5s3", None),
])
def test_durations_parse(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_only_low_budgets_are_worth_enforcing() -> None:
    assert budgets(TIGHT, 200) == [Budget("requests", 1, 60, 1.0)]
    roomy = {**TIGHT, "X-RateLimit-Remaining-Requests": "50"}
    assert budgets(roomy, 200) == []
    low_tokens = {**roomy, "x-ratelimit-remaining-tokens": "900",
                  "x-ratelimit-reset-tokens": "6m0s"}
    assert budgets(low_tokens, 200) == [Budget("tokens", 900, 150000, 360.0)]


def test_a_429_empties_the_request_budget_until_it_may_try_again() -> None:
    assert budgets({"retry-after-ms": "1500"}, 429) == [Budget("requests", 0, 0, 1.5)]
    assert budgets({"retry-after": "3"}, 429) == [Budget("requests", 0, 0, 3.0)]
    assert budgets({**TIGHT, "X-RateLimit-Remaining-Requests": "0"}, 429) == [
        Budget("requests", 0, 60, 1.0)]
    assert budgets({}, 429) == [Budget("requests", 0, 0, 1.0)]


def admit_call(guard: Guard, tokens: int = 100) -> Any:
    scopes = model_scopes(guard.limits, "gpt-5-nano", tokens)
    return guard.admission.admit(Ask("character.backstory", "", tuple(scopes)))


async def test_observed_budget_is_shared_and_only_tightens(
        guard_factory: Callable[..., Guard]) -> None:
    guard, other_replica = guard_factory(), guard_factory()
    await guard.observe("gpt-5-nano", TIGHT, 200)
    assert isinstance(await admit_call(guard), Admitted)
    limited = await admit_call(other_replica)
    assert isinstance(limited, Limited) and limited.scope.scope == "provider"
    assert 0 < limited.retry_after_s <= 1.0
    await other_replica.observe("gpt-5-nano", {**TIGHT, "X-RateLimit-Remaining-Requests": "9",
                                               "X-RateLimit-Limit-Requests": "10"}, 200)
    assert isinstance(await admit_call(guard), Limited), "a later, looser report does not loosen"
    [exceeded] = limited.notices
    assert (exceeded.event, exceeded.limit, exceeded.remaining) == ("exceeded", 60, 0)
    await asyncio.sleep(limited.retry_after_s + 0.05)
    assert isinstance(await admit_call(guard), Admitted), "the budget ends at the reset"


async def test_token_budget_and_429(guard_factory: Callable[..., Guard]) -> None:
    guard = guard_factory()
    await guard.observe("gpt-5-nano", {"x-ratelimit-limit-tokens": "150000",
                                       "x-ratelimit-remaining-tokens": "1500",
                                       "x-ratelimit-reset-tokens": "2s"}, 200)
    assert isinstance(await admit_call(guard, 1000), Admitted)
    limited = await admit_call(guard, 1000)
    assert isinstance(limited, Limited) and limited.scope.key == "gpt-5-nano/tokens"
    await guard.observe("gpt-4-turbo", {"retry-after-ms": "800"}, 429)
    blocked = await guard.admission.admit(Ask("x", "", tuple(
        model_scopes(guard.limits, "gpt-4-turbo", 1))))
    assert isinstance(blocked, Limited) and blocked.retry_after_s <= 0.8


async def test_the_openai_provider_reports_headers_that_hold_other_requests(
        openai_service: Any, fake_openai: Any) -> None:
    """End to end: the real SDK reads the fake server's headers, the provider hands them to
    the guard, and the next request waits for the provider's reset."""
    service: Service = await openai_service(rate_limit_inline_wait_s=0.2)
    fake_openai.script(reply(None, headers={"x-ratelimit-limit-requests": "500",
                                            "x-ratelimit-remaining-requests": "0",
                                            "x-ratelimit-reset-requests": "2s"}))
    assert result_of(await service.request("character.backstory", SHEET))
    async with tap(service.settings, "rate_limit.*") as hub:
        later = await service.request("character.backstory", sheet(7), timeout_s=30)
        exceeded, *_ = hub.of_type(catalog.RATE_LIMIT_EXCEEDED)
    assert result_of(later)["cached"] is False
    assert (exceeded["data"]["scope"], exceeded["data"]["key"]) == ("provider", "gpt-5-nano")
    first, second = fake_openai.chat_requests
    assert second.received_at - first.received_at >= 1.9
