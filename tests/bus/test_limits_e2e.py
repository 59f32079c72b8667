"""Rate limits end to end: deferral through the delay queues (and its events), the final
`rate_limited`, notices, per-user limits, and three replicas holding a limit at the provider."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from llm_consumer.client import build_request
from llm_consumer.events import catalog
from tests.bus.test_cache_e2e import SHEET, replicas, result_of
from tests.conftest import Service, token
from tests.fakes.openai_server import Reply, Responder, reply
from tests.hub import dead_letters, tap

HERO = re.compile(r"Hero (\d+)")  # the name of `sheet(n)` in a prompt
REPAIR = "Your previous answer was rejected"


def sheet(n: int) -> dict[str, Any]:
    return {**SHEET, "context": {**SHEET["context"], "name": f"Hero {n}"}}


def states(exchange: Any) -> list[tuple[str, int]]:
    return [(e["data"]["state"], e["data"]["attempt"]) for e in exchange.events
            if e["type"] == catalog.JOB_STATUS]


def most_in_any_window(times: list[float], window_s: float) -> int:
    ordered = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_over_the_limit_waits_in_a_delay_queue_without_using_attempts(
        openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service(rate_limit_text="1/4s", rate_limit_inline_wait_s=0.5,
                                            max_attempts=1)
    first = await service.request("character.backstory", sheet(1))
    async with tap(service.settings, "rate_limit.*") as hub:
        second = await service.request("character.backstory", sheet(2), timeout_s=30)
    assert result_of(first)["cached"] is False and result_of(second)["cached"] is False
    calls = fake_openai.chat_requests
    assert len(calls) == 2
    assert calls[1].received_at - calls[0].received_at >= 4.0
    seen = states(second)
    assert seen[0] == ("running", 0) and seen[1] == ("deferred", 0)
    assert seen[-1] == ("completed", 0), "a deferral never uses up an attempt"
    assert all(attempt == 0 for _, attempt in seen)
    exceeded = hub.of_type(catalog.RATE_LIMIT_EXCEEDED)[0]["data"]
    assert exceeded["scope"] == "operation" and exceeded["key"] == "text"
    assert exceeded["limit"] == 1 and exceeded["window_s"] == 4 and exceeded["remaining"] == 0
    assert 3 < exceeded["retry_after_s"] <= 4.12


async def test_past_the_maximum_wait_it_fails_rate_limited(openai_service: Any,
                                                           fake_openai: Any) -> None:
    service: Service = await openai_service(rate_limit_text="1/60s", rate_limit_inline_wait_s=0,
                                            rate_limit_max_wait_s=3)
    await service.request("campaign.plot", sheet(1))
    failed = await service.request("campaign.plot", sheet(2), timeout_s=30)
    assert failed.final is not None and failed.final["type"] == catalog.GENERATION_FAILED
    error = failed.final["data"]["error"]
    assert error["code"] == "rate_limited" and error["retryable"] is True
    assert "RATE_LIMIT_MAX_WAIT_S" in error["message"]
    assert failed.final["data"]["attempts"] == 1
    assert states(failed)[-1] == ("failed", 0)
    assert [s for s, _ in states(failed)].count("deferred") >= 2
    [letter] = await dead_letters(service.settings, expect=1)
    assert letter.headers["x-error-code"] == "rate_limited"
    assert letter.headers["x-deferred-s"] >= 3
    assert len(fake_openai.chat_requests) == 1


async def waiting(service: Service, kind: str, data: dict[str, Any], *,
                  auth: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send a request that cannot be admitted soon: (its exceeded notice, its deferral)."""
    request = build_request(kind, data)
    async with tap(service.settings) as hub:
        sending = asyncio.create_task(service.send(request, auth=auth or token(), timeout_s=60))
        [exceeded] = await hub.wait_for(catalog.RATE_LIMIT_EXCEEDED)
        deferred = await hub.wait_for(catalog.JOB_STATUS, request["id"], count=2)
        sending.cancel()
    return exceeded["data"], deferred[1]["data"]


async def test_warning_at_80_percent_then_exceeded(openai_service: Any) -> None:
    service: Service = await openai_service(rate_limit_theme="5/60s", rate_limit_inline_wait_s=0,
                                            rate_limit_user_share=1)
    text = {"context": {"text": "The knight rode into town."}}
    async with tap(service.settings, "rate_limit.*") as hub:
        for preset in ("dark-fantasy", "gothic-horror", "high-fantasy"):
            await service.request("theme.apply", {**text, "theme": {"preset": preset}})
        assert hub.of_type(catalog.RATE_LIMIT_WARNING) == []
        await service.request("theme.apply", {**text, "theme": {"preset": "steampunk"}})
        [warning] = await hub.wait_for(catalog.RATE_LIMIT_WARNING)
    assert warning["data"] == {"scope": "operation", "key": "theme", "limit": 5,
                               "window_s": 60, "remaining": 1, "retry_after_s": 0}
    await service.request("theme.apply", text)
    exceeded, deferred = await waiting(service, "theme.analyze", {"context": {
        "content": "A grim keep.", "target_theme": "gothic-horror"}})
    assert exceeded["scope"] == "operation" and exceeded["key"] == "theme"
    assert exceeded["remaining"] == 0 and 55 < exceeded["retry_after_s"] <= 61.2
    assert deferred["state"] == "deferred" and deferred["attempt"] == 0


async def test_per_user_limit_follows_sub_or_admitted_user_id(openai_service: Any) -> None:
    service: Service = await openai_service(rate_limit_user="1/60s", rate_limit_inline_wait_s=0)
    alice = token("llm:content", subject="alice")
    assert result_of(await service.request("world.location", sheet(1), auth=alice))
    on_behalf = await service.request("world.location", {**sheet(2), "user_id": "bob"},
                                      auth=token("llm:content", "llm:admin", subject="ops"))
    assert result_of(on_behalf) and ("deferred", 0) not in states(on_behalf), (
        "an admin asked for bob: bob's budget")
    exceeded, _ = await waiting(service, "world.location", {**sheet(3), "user_id": "bob"},
                                auth=alice)
    assert (exceeded["scope"], exceeded["key"]) == ("user", "alice"), (
        "user_id from a caller without llm:admin is not trusted")


def off_schema_first_answer(heroes: set[int]) -> Responder:
    """An off-schema first answer for these heroes' requests, a good repair: each of them
    makes exactly one repair call, whichever order the calls of all requests arrive in."""
    def respond(body: dict[str, Any]) -> Reply | None:
        prompt = json.dumps(body.get("messages", []))
        named = HERO.search(prompt)
        if named is None or int(named.group(1)) not in heroes or REPAIR in prompt:
            return None
        return reply('{"not": "a backstory"}')
    return respond


async def test_three_replicas_hold_the_model_limit_at_the_provider(openai_service: Any,
                                                                   fake_openai: Any) -> None:
    """Every call reaching the provider, repairs included, counted over every 4 s window."""
    services = await replicas(openai_service, 3, rate_limit_text="off", rate_limit_user_share=1,
                              rate_limit_models={"gpt-5-nano": "4/4s"})
    fake_openai.responder = off_schema_first_answer(heroes={0, 4, 8})
    exchanges = await asyncio.gather(*(services[i % 3].request(
        "character.backstory", sheet(i), timeout_s=90) for i in range(13)))
    assert all(result_of(e) for e in exchanges)
    times = [call.received_at for call in fake_openai.chat_requests]
    assert len(times) >= 16, "13 answers and 3 repairs"
    repairs = [c for c in fake_openai.chat_requests if REPAIR in json.dumps(c.body["messages"])]
    assert len(repairs) == 3, "one repair for each off-schema answer"
    assert most_in_any_window(times, 4.0) <= 4, [round(t - min(times), 3) for t in sorted(times)]
