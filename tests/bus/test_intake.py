"""The intake stage on its own (parse -> authorize), no broker: what each caller mistake or
attack gets, and where the refusal may be told. A stand-in carries the four things of a
delivery intake reads (headers, reply_to, routing key, body)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from aio_pika.abc import AbstractIncomingMessage

from llm_consumer.app import caller_rules
from llm_consumer.auth import TokenVerifier
from llm_consumer.bus.intake import Accepted, Intake, Refused
from llm_consumer.client import build_request
from tests.conftest import SECRET, make_settings, token

SETTINGS = make_settings(reply_to_pattern=r"^reply\.[a-z]+$")
RULES = caller_rules(SETTINGS)
INTAKE = Intake(TokenVerifier(SETTINGS.secret), RULES.replies, RULES.models,
                work_queue=f"{SETTINGS.queue_prefix}requests",
                max_message_bytes=SETTINGS.max_message_bytes)


@dataclass
class Delivery:
    body: bytes
    routing_key: str = "content.requested"
    reply_to: str | None = "reply.alice"
    headers: dict[str, Any] = field(default_factory=dict)


def delivery(*, auth: str | None, data: dict[str, Any] | None = None,
             kind: str = "character.backstory", **overrides: Any) -> AbstractIncomingMessage:
    body = orjson.dumps(build_request(kind, data or {"context": {"name": "Mira"}}))
    headers = {"authorization": f"Bearer {auth}"} if auth is not None else {}
    return cast(AbstractIncomingMessage, Delivery(body, headers=headers, **overrides))


def test_a_good_request_is_accepted_with_its_reply_queue() -> None:
    taken = INTAKE.take_in(delivery(auth=token("llm:content", subject="alice")))
    assert isinstance(taken, Accepted)
    assert taken.principal.subject == "alice" and taken.reply_to == "reply.alice"
    assert taken.parsed.envelope.type == "content.requested"


def test_no_or_forged_token_is_refused_and_never_answered_in_its_reply_queue() -> None:
    for auth in (None, "not-a-jwt", token("llm:content")[:-4] + "AAAA"):
        taken = INTAKE.take_in(delivery(auth=auth))
        assert isinstance(taken, Refused)
        assert taken.error.code == "unauthorized" and taken.reply_to is None


def test_a_token_of_another_secret_is_refused() -> None:
    from llm_consumer.auth import mint_token

    forged = mint_token("x" * 64 + SECRET, subject="alice", permissions=("llm:content",))
    taken = INTAKE.take_in(delivery(auth=forged))
    assert isinstance(taken, Refused) and taken.error.code == "unauthorized"


def test_a_caller_without_the_permission_hears_nothing_in_its_queue() -> None:
    taken = INTAKE.take_in(delivery(auth=token("llm:image")))
    assert isinstance(taken, Refused)
    assert taken.error.code == "forbidden" and taken.reply_to is None


def test_a_reply_queue_the_caller_cannot_own_is_refused() -> None:
    for queue in (f"{SETTINGS.queue_prefix}requests", "reply.Bob", "bob's"):
        taken = INTAKE.take_in(delivery(auth=token("llm:content"), reply_to=queue))
        assert isinstance(taken, Refused) and taken.reply_to is None


def test_a_bad_body_from_a_good_caller_is_refused_and_told_in_its_queue() -> None:
    bad = cast(AbstractIncomingMessage, Delivery(
        b'{"specversion": "1.0", "id": 5}',
        headers={"authorization": f"Bearer {token('llm:content')}"}))
    taken = INTAKE.take_in(bad)
    assert isinstance(taken, Refused) and taken.error.code == "invalid_request"
    assert taken.reply_to == "reply.alice"


def test_a_model_outside_the_allowlist_is_refused() -> None:
    taken = INTAKE.take_in(delivery(auth=token("llm:content"), data={
        "context": {"name": "Mira"}, "model": {"name": "gpt-9-ultra-expensive"}}))
    assert isinstance(taken, Refused) and taken.error.code == "invalid_request"
    assert "gpt-9-ultra-expensive" in taken.error.message


def test_an_oversized_body_is_refused_before_it_is_read() -> None:
    huge = delivery(auth=token("llm:content"),
                    data={"context": {"text": "x" * (SETTINGS.max_message_bytes + 1)}})
    taken = INTAKE.take_in(huge)
    assert isinstance(taken, Refused) and taken.error.code == "invalid_request"
