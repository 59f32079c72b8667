"""The first stage of a delivery: parse and authorize, returned as a value.

`take_in` reads the caller's token, the reply queue it names, the body and the permission its
event type needs, in that order, and returns `Accepted` or `Refused`. `reply_to` is trusted
only once the token and the queue are checked, and only for a caller who holds the event's
permission: a refused message from anyone else is answered on the hub alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage

from llm_consumer.auth import Principal, TokenVerifier, require
from llm_consumer.errors import RejectedMessage
from llm_consumer.events.parsing import Parsed, parse
from llm_consumer.events.requests import ContentRequested, ImageRequested
from llm_consumer.policy import ModelPolicy, ReplyPolicy


@dataclass(frozen=True, slots=True)
class Accepted:
    parsed: Parsed
    principal: Principal
    reply_to: str | None  # checked: the caller may be answered there


@dataclass(frozen=True, slots=True)
class Refused:
    error: RejectedMessage
    reply_to: str | None  # None unless the caller's token, queue and permission were good


@dataclass(frozen=True, slots=True)
class Intake:
    verifier: TokenVerifier
    replies: ReplyPolicy
    models: ModelPolicy
    work_queue: str  # retry and replay copies arrive under this routing key
    max_message_bytes: int

    def take_in(self, message: AbstractIncomingMessage) -> Accepted | Refused:
        reply_to: str | None = None
        try:
            principal = self.verifier.verify_header(message.headers or {})
            checked_reply_to = self.replies.check(message.reply_to)
            reply_to = checked_reply_to
            routing_key = message.routing_key or ""
            parsed = parse(message.body, "" if routing_key == self.work_queue else routing_key,
                           max_bytes=self.max_message_bytes)
            assert parsed.spec.permission is not None
            reply_to = None  # a caller without the permission hears nothing there
            require(principal, parsed.spec.permission)
            reply_to = checked_reply_to
            if isinstance(parsed.data, ContentRequested | ImageRequested):
                self.models.check(parsed.data)
        except RejectedMessage as error:
            return Refused(error, reply_to)
        return Accepted(parsed, principal, reply_to)
