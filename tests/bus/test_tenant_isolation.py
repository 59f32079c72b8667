"""Tenant isolation, tried as a hostile peer with several tokens would: reused event ids,
reply_to aimed at other queues, cancelling someone else's work, forged retry headers, a
burst that would starve another user, and unlisted models."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aio_pika
import jwt
import orjson

from llm_consumer.client import build_request
from llm_consumer.events import catalog
from tests.conftest import HUB_URL, SECRET, Service, token
from tests.fakes.openai_server import hang, server_error
from tests.hub import dead_letters, publish_raw, queue_depth, tap

ANALYZE = {"context": {"content": "A grim keep.", "target_theme": "gothic-horror",
                       "elements": ["tone", "mood"]}}
VALIDATE = {"context": {"content": {"name": "Mira", "class": "Rogue", "level": 3}}}
BACKSTORY = {"context": {"name": "Mira", "class": "Rogue"}}


def alice(*scopes: str) -> str:
    return token(*(scopes or ("llm:content",)), subject="alice")


def bob(*scopes: str) -> str:
    return token(*(scopes or ("llm:content",)), subject="bob")


async def publish(service: Service, request: dict[str, Any], *, auth: str | None,
                  reply_to: str | None = None, routing_key: str = "content.requested",
                  headers: dict[str, Any] | None = None) -> None:
    sent = dict(headers or {})
    if auth:
        sent["authorization"] = f"Bearer {auth}"
    await publish_raw(service.settings, orjson.dumps(request), routing_key=routing_key,
                      headers=sent, reply_to=reply_to)


async def test_a_reused_event_id_never_answers_with_another_callers_result(
        openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service()
    shared_id = str(uuid.uuid4())
    first = await service.request("theme.analyze", ANALYZE, auth=alice(), request_id=shared_id)
    assert first.final is not None and first.final["type"] == catalog.THEME_ANALYZED

    stolen = await service.request("content.validate", VALIDATE, auth=bob(),
                                   request_id=shared_id)
    assert stolen.final is not None
    assert stolen.final["type"] == catalog.VALIDATION_COMPLETED  # Bob's own request ran
    assert all(e["type"] != catalog.THEME_ANALYZED for e in stolen.events)
    assert len(fake_openai.chat_requests) == 2

    again = await service.request("theme.analyze", ANALYZE, auth=alice(), request_id=shared_id)
    assert again.final is not None and again.final["type"] == catalog.THEME_ANALYZED
    assert again.final["id"] == first.final["id"]  # Alice's re-send: her stored answer
    assert len(fake_openai.chat_requests) == 2


async def test_reply_to_only_reaches_queues_a_caller_can_own(start_service: Any) -> None:
    service: Service = await start_service()
    work = f"{service.settings.queue_prefix}requests"
    dead = f"{service.settings.queue_prefix}dead"
    async with tap(service.settings, "generation.failed") as hub:
        for target in (work, dead, "character-service.inbox"):
            request = build_request("character.backstory", BACKSTORY)
            await publish(service, request, auth=alice(), reply_to=target)
            [failed] = await hub.wait_for("generation.failed", request["id"])
            assert failed["data"]["error"]["code"] == "invalid_request"
            assert "reply_to" in failed["data"]["error"]["message"]
    letters = await dead_letters(service.settings, expect=3)
    assert [m.headers["x-error-code"] for m in letters] == ["invalid_request"] * 3
    assert await queue_depth(service.settings, work) == 0  # nothing was pushed into it


async def test_no_reply_to_delivery_for_a_caller_without_the_permission(
        start_service: Any) -> None:
    service: Service = await start_service()
    async with tap(service.settings, binding=None) as replies, \
            tap(service.settings, "generation.failed") as hub:
        request = build_request("character.backstory", BACKSTORY)
        await publish(service, request, auth=token("llm:image", subject="mallory"),
                      reply_to=replies.queue_name)
        [failed] = await hub.wait_for("generation.failed", request["id"])
        assert failed["data"]["error"]["code"] == "forbidden"
        await asyncio.sleep(0.5)  # anything sent to the reply queue would be there by now
    assert replies.events == []


async def test_a_caller_cancels_its_own_request_but_not_anothers(
        openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service()
    fake_openai.script(hang(20))
    request = build_request("campaign.events", {"context": {"name": "Mira"}})
    async with tap(service.settings) as hub:
        sending = asyncio.create_task(service.send(request, auth=alice(), timeout_s=30))
        await hub.wait_for(catalog.JOB_STATUS, request["id"])  # running
        foreign = build_request("x", {})
        foreign.update(type="job.cancel", source=request["source"],
                       data={"request_id": request["id"]})
        await publish(service, foreign, auth=bob(), routing_key="job.cancel")
        sneaky = build_request("x", {})
        sneaky.update(type="job.cancel", data={"request_id": request["id"], "subject": "alice"})
        await publish(service, sneaky, auth=bob(), routing_key="job.cancel")
        [refused] = await hub.wait_for("generation.failed", sneaky["id"])
        assert refused["data"]["error"]["code"] == "forbidden"
        await asyncio.sleep(0.5)
        assert not sending.done()  # Bob's cancel named Bob's (absent) request: Alice's runs on

        own = build_request("x", {})
        own.update(type="job.cancel", source=request["source"],
                   data={"request_id": request["id"]})
        await publish(service, own, auth=alice(), routing_key="job.cancel")
        result = await sending
    assert result.final is not None
    assert result.final["data"]["error"]["code"] == "cancelled"


async def test_forged_retry_headers_are_ignored_and_the_call_cap_spans_attempts(
        openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service(max_attempts=5, max_provider_calls_per_request=3)
    fake_openai.script(*[server_error(500) for _ in range(10)])
    request = build_request("character.backstory", BACKSTORY)
    forged = {"x-attempt": 4, "x-provider-calls": 0, "x-deferred-s": 0,
              "x-llm-signature": "0" * 64}
    async with tap(service.settings, "generation.failed") as hub:
        # Straight into the work queue, as the service's own retry copies arrive.
        connection = await aio_pika.connect(HUB_URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.default_exchange.publish(aio_pika.Message(
                orjson.dumps(request), message_id=request["id"],
                headers={**forged, "authorization": f"Bearer {alice()}"}),
                routing_key=f"{service.settings.queue_prefix}requests")
        [failed] = await hub.wait_for("generation.failed", request["id"], timeout_s=60)
    # x-attempt 4 would have made the first failure final; it was read as attempt 0, and the
    # third paid call was the last one this message could cause.
    assert failed["data"]["error"]["code"] == "quota_exhausted"
    assert "3 provider calls" in failed["data"]["error"]["message"]
    assert failed["data"]["attempts"] == 4
    assert len(fake_openai.chat_requests) == 3


async def test_one_bursting_user_leaves_the_others_their_share(
        openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service(
        rate_limit_text="8/minute", rate_limit_user_share=0.5, rate_limit_inline_wait_s=0,
        rate_limit_max_wait_s=0)
    def sheet(n: int) -> dict[str, Any]:  # all different: cache hits would cost no limit
        return {"context": {"name": f"Mira {n}", "class": "Rogue"}}

    alices = await asyncio.gather(*[service.request("character.backstory", sheet(n),
                                                    auth=alice()) for n in range(8)])
    bobs = await asyncio.gather(*[service.request("character.backstory", sheet(100 + n),
                                                  auth=bob()) for n in range(2)])
    outcome = [r.final["type"] if r.final else None for r in alices]
    assert outcome.count(catalog.CONTENT_GENERATED) == 4
    refused = [r.final for r in alices if r.final and r.final["type"] == "generation.failed"]
    assert [f["data"]["error"]["code"] for f in refused] == ["rate_limited"] * 4
    assert "alice/operation/text" in refused[0]["data"]["error"]["message"]
    assert [r.final["type"] if r.final else None for r in bobs] == [
        catalog.CONTENT_GENERATED] * 2


async def test_only_offered_models_may_be_named(openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service()
    result = await service.request(
        "character.backstory", {**BACKSTORY, "model": {"name": "gpt-4.5-preview-expensive"}},
        auth=alice())
    assert result.final is not None
    assert result.final["data"]["error"]["code"] == "invalid_request"
    assert "not offered" in result.final["data"]["error"]["message"]
    assert fake_openai.chat_requests == []

    widened: Service = await openai_service(allowed_models="gpt-4.5-preview-expensive")
    allowed = await widened.request(
        "character.backstory", {**BACKSTORY, "model": {"name": "gpt-4.5-preview-expensive"}},
        auth=alice())
    assert allowed.final is not None and allowed.final["type"] == catalog.CONTENT_GENERATED
    assert fake_openai.chat_requests[-1].body["model"] == "gpt-4.5-preview-expensive"


async def test_an_attack_by_several_tokens_ends_in_a_full_ledger(
        openai_service: Any, fake_openai: Any) -> None:
    """Every message three callers publish ends answered, failed or dead-lettered with its
    reason; each caller's reply queue holds only answers to its own requests."""
    service: Service = await openai_service()
    work = f"{service.settings.queue_prefix}requests"
    now = int(time.time())
    forever = jwt.encode({"sub": "mallory", "scope": "llm:content", "iat": now,
                          "exp": 253402300799}, SECRET, algorithm="HS256")
    async with tap(service.settings) as hub, tap(service.settings, binding=None) as to_alice, \
            tap(service.settings, binding=None) as to_bob, \
            tap(service.settings, binding=None) as to_mallory:
        queue_of = {"alice": to_alice.queue_name, "bob": to_bob.queue_name,
                    "mallory": to_mallory.queue_name}
        # (sender, request, headers, reply_to, expected final type, expected code)
        plan: list[tuple[str, dict[str, Any], dict[str, Any], str | None, str, str | None]] = []

        def add(sender: str, kind: str, data: dict[str, Any], *, expect: str,
                code: str | None = None, auth: str | None = None,
                headers: dict[str, Any] | None = None, reply_to: str | None = "own",
                request_id: str | None = None) -> dict[str, Any]:
            request = build_request(kind, data, request_id=request_id)
            sent = {"authorization": f"Bearer {auth or token('llm:content', subject=sender)}",
                    **(headers or {})}
            plan.append((sender, request, sent, queue_of[sender] if reply_to == "own"
                         else reply_to, expect, code))
            return request

        shared = add("alice", "theme.analyze", ANALYZE, expect=catalog.THEME_ANALYZED)
        add("alice", "character.backstory", BACKSTORY, expect=catalog.CONTENT_GENERATED)
        add("bob", "content.validate", VALIDATE, expect=catalog.VALIDATION_COMPLETED,
            request_id=shared["id"])
        add("bob", "character.backstory", {**BACKSTORY, "model": {"name": "o1-pro"}},
            expect="generation.failed", code="invalid_request")
        add("mallory", "character.backstory", BACKSTORY, expect="generation.failed",
            code="invalid_request", reply_to=work)
        add("mallory", "character.backstory", BACKSTORY, expect="generation.failed",
            code="unauthorized", auth=forever)
        add("mallory", "character.backstory", BACKSTORY, expect="generation.failed",
            code="unauthorized", headers={"Authorization": f"Bearer {alice()}"})
        add("mallory", "character.backstory", BACKSTORY, expect="generation.failed",
            code="forbidden", auth=token("llm:image", subject="mallory"))
        add("mallory", "character.hairstyle", BACKSTORY, expect="generation.failed",
            code="invalid_request")
        add("mallory", "world.location", BACKSTORY, expect=catalog.CONTENT_GENERATED,
            headers={"x-attempt": 999, "x-provider-calls": 10**6})
        for _, request, headers, reply_to, _, _ in plan:
            await publish(service, request, auth=None, headers=headers, reply_to=reply_to)

        # The shared id is told apart by type: Alice's analysis, Bob's validation.
        finals = [(await hub.wait_for(expect, request["id"], timeout_s=60))[0]
                  for _, request, _, _, expect, _ in plan]
        await asyncio.sleep(0.5)  # late deliveries to any reply queue would show now

    ledger = []
    for (sender, request, _, _, expect, code), final in zip(plan, finals, strict=True):
        got_code = final["data"]["error"]["code"] if final["type"] == "generation.failed" else None
        ledger.append((sender, request["data"].get("kind"), final["type"], got_code))
        assert final["type"] == expect and got_code == code, (sender, request, final)
    print("\nsender  | kind | final event | code")  # the ledger, for `pytest -s`
    for row in ledger:
        print(" | ".join(str(cell) for cell in row))
    rejected = [row for row in ledger if row[3] is not None]
    letters = await dead_letters(service.settings, expect=len(rejected))
    assert sorted(m.headers["x-error-code"] for m in letters) == sorted(r[3] for r in rejected)

    # No cross-tenant delivery: each reply queue holds events of its owner's requests only.
    def answers(queue: Any) -> set[tuple[str, str]]:
        return {(e["data"].get("request_id"), e["type"]) for e in queue.events
                if e["type"] not in (catalog.JOB_STATUS, catalog.CONTENT_PROGRESS)}

    assert answers(to_alice) == {(r["id"], expect) for s, r, _, _, expect, _ in plan
                                 if s == "alice"}
    assert answers(to_bob) == {(r["id"], expect) for s, r, _, _, expect, _ in plan
                               if s == "bob"}
    # Mallory's refused messages were not answered into any queue, only her valid one was.
    assert answers(to_mallory) == {(plan[-1][1]["id"], catalog.CONTENT_GENERATED),
                                   (plan[-2][1]["id"], "generation.failed")}
    assert await queue_depth(service.settings, work) == 0
    assert len(fake_openai.chat_requests) == 4  # alice 2, bob 1, mallory's one valid request
