"""Bad input and bad tokens: never processed, never lost, always explained."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import orjson
import pytest

from llm_consumer.client import build_request
from tests.conftest import SECRET, Service, token
from tests.hub import dead_letters, publish_raw, tap

BACKSTORY = {"context": {"name": "Mira", "class": "Rogue"}}


def envelope(**changes: Any) -> dict[str, Any]:
    request = build_request("character.backstory", BACKSTORY)
    request.update(changes)
    return request


async def send(service: Service, body: bytes | dict[str, Any], *, auth: str | None,
               routing_key: str = "content.requested", reply_to: str | None = None) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"authorization": f"Bearer {auth}"} if auth else {}
    await publish_raw(service.settings, raw, routing_key=routing_key, headers=headers,
                      reply_to=reply_to)


@pytest.mark.parametrize(
    ("body", "code", "reason"),
    [
        (b"\xff\xfe not json at all", "invalid_request", "not valid JSON"),
        (b"[1, 2, 3]", "invalid_request", "JSON object"),
        (orjson.dumps({"specversion": "1.0", "type": "content.requested"}), "invalid_request",
         "invalid envelope"),
    ],
    ids=["bad-bytes", "json-array", "envelope-without-id"],
)
async def test_unreadable_bodies_are_dead_lettered_with_reason(
    start_service: Any, body: bytes, code: str, reason: str
) -> None:
    service = await start_service()
    await send(service, body, auth=token())
    [letter] = await dead_letters(service.settings, expect=1)
    assert letter.headers["x-error-code"] == code
    assert reason in str(letter.headers["x-error-message"])
    assert letter.body == body, "the dead letter keeps the original body for replay"


async def test_invalid_request_with_readable_id_gets_generation_failed(start_service: Any) -> None:
    service = await start_service()
    async with tap(service.settings, binding=None) as replies:
        bad = envelope(data={"kind": "character.hairstyle", "context": {}})
        await send(service, bad, auth=token(), reply_to=replies.queue_name)
        [failed] = await replies.wait_for("generation.failed", bad["id"])
    assert failed["data"]["error"]["code"] == "invalid_request"
    assert "data.kind" in failed["data"]["error"]["message"]
    assert failed["data"]["request_type"] == "content.requested"
    assert failed["correlationid"] == bad["id"]
    [letter] = await dead_letters(service.settings, expect=1)
    assert letter.headers["x-error-code"] == "invalid_request"


async def test_oversized_message_is_refused(start_service: Any) -> None:
    service = await start_service(max_message_bytes=4096)
    big = envelope(data={"kind": "character.backstory", "context": {"notes": "x" * 10_000}})
    async with tap(service.settings, "generation.failed") as hub:
        await send(service, big, auth=token())
        [letter] = await dead_letters(service.settings, expect=1)
        assert "over the 4096-byte limit" in letter.headers["x-error-message"]
        assert hub.of_type("generation.failed") == [], "an oversized body is not parsed for an id"


async def test_type_must_match_routing_key(start_service: Any) -> None:
    service = await start_service()
    request = envelope(type="image.requested")
    await send(service, request, auth=token(), routing_key="content.requested")
    [letter] = await dead_letters(service.settings, expect=1)
    assert "does not match routing key" in letter.headers["x-error-message"]


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "peer", "scope": "llm:content", "iat": now,
                              "exp": now + 300}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


FORGED = jwt.encode(_claims(), "another-secret-" + "x" * 64, algorithm="HS256")
EXPIRED = jwt.encode(_claims(exp=int(time.time()) - 3600), SECRET, algorithm="HS256")
NO_EXP = jwt.encode(_claims(exp=None), SECRET, algorithm="HS256")
HS512 = jwt.encode(_claims(), SECRET, algorithm="HS512")
ALG_NONE = jwt.encode(_claims(), None, algorithm="none")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("auth", "reason"),
    [(None, "missing authorization"), (FORGED, "Signature verification failed"),
     (EXPIRED, "expired"), (NO_EXP, '"exp"'), (ALG_NONE, "invalid token"),
     (HS512, "invalid token"), ("not.a.jwt", "invalid token")],
    ids=["missing", "forged", "expired", "no-exp", "alg-none", "other-alg", "garbage"],
)
async def test_unauthorized_requests_are_failed_and_dead_lettered(
    start_service: Any, auth: str | None, reason: str
) -> None:
    service = await start_service()
    request = envelope()
    async with tap(service.settings, "generation.failed") as hub, \
            tap(service.settings, binding=None) as replies:
        await send(service, request, auth=auth, reply_to=replies.queue_name)
        [failed] = await hub.wait_for("generation.failed", request["id"])
        assert failed["data"]["error"]["code"] == "unauthorized"
        assert reason in failed["data"]["error"]["message"]
        [letter] = await dead_letters(service.settings, expect=1)
        assert letter.headers["x-error-code"] == "unauthorized"
        assert replies.events == [], "reply_to of an unauthenticated message is not trusted"


async def test_wrong_scope_is_forbidden(start_service: Any) -> None:
    service = await start_service()
    request = envelope()
    async with tap(service.settings, binding=None) as replies, \
            tap(service.settings, "generation.failed") as hub:
        await send(service, request, auth=token("llm:image"), reply_to=replies.queue_name)
        [failed] = await hub.wait_for("generation.failed", request["id"])
    assert replies.events == [], "a caller without the permission gets no reply_to delivery"
    assert failed["data"]["error"]["code"] == "forbidden"
    assert "llm:content" in failed["data"]["error"]["message"]
    [letter] = await dead_letters(service.settings, expect=1)
    assert letter.headers["x-error-code"] == "forbidden"


async def test_control_events_need_their_permission(start_service: Any) -> None:
    service = await start_service()
    invalidate = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/ops",
                  "type": "cache.invalidate", "data": {}}
    cancel = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/ops",
              "type": "job.cancel", "data": {"request_id": "r-1"}}
    async with tap(service.settings, "generation.failed") as hub:
        await send(service, invalidate, auth=token("llm:content"),
                   routing_key="cache.invalidate")
        await send(service, cancel, auth=token("llm:other"), routing_key="job.cancel")
        [refused_invalidate] = await hub.wait_for("generation.failed", invalidate["id"])
        [refused_cancel] = await hub.wait_for("generation.failed", cancel["id"])
    assert refused_invalidate["data"]["error"]["code"] == "forbidden"
    assert "llm:admin" in refused_invalidate["data"]["error"]["message"]
    assert refused_cancel["data"]["error"]["code"] == "forbidden"
