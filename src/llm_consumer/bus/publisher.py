"""Persistent publishing. Results, retry copies and dead letters return only once the broker
has confirmed them.

Results go to the hub with `mandatory`; one the hub cannot route to any queue comes back as a
return and is kept in the unrouted queue instead, so a result never vanishes without a trace.
Notices (progress, job status, rate-limit notices, heartbeats) go out on a channel without
confirms when the app gives one: nothing waits on them, and a lost notice is superseded by the
next one or by the result. Notices nobody subscribed to are simply not delivered, and one
published while the broker connection is down (between a lost link and the reconnect) is
dropped and counted: a request never fails because its progress could not be told.

Dead letters go to a bounded queue that refuses (nacks) what it has no room for, and one that
the dead-letter exchange cannot route is returned. Either way the dead letter is parked: a copy
waits in the longest delay queue with PARKED_HEADER, returns to the work queue and is
dead-lettered again, unprocessed (see `parked_dead_letter`), until the queue takes it. Meanwhile
an alarm is up (a gauge, a heartbeat component, an error log line); the first dead letter the
queue takes again clears it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    FieldValue,
)
from aiormq.exceptions import (
    AMQPConnectionError,
    ChannelInvalidStateError,
    DeliveryError,
    PublishError,
)
from pamqp.commands import Basic

from llm_consumer import metrics
from llm_consumer.bus.retry_state import RetrySigner, RetryState
from llm_consumer.bus.topology import Topology
from llm_consumer.events.catalog import EVENTS, REQUEST_TYPES
from llm_consumer.events.envelope import CLOUDEVENTS_CONTENT_TYPE, Envelope, encode
from llm_consumer.events.parsing import peek
from llm_consumer.logging import RateLimitedWarning

log = structlog.get_logger(__name__)
# A fresh hub (no peer bound to results yet) returns every result: counted, one line a minute.
UNROUTED_WARNING = RateLimitedWarning("event.unrouted", every_s=60.0, logger=log)
NOTICE_DROPPED_WARNING = RateLimitedWarning("notice.dropped", every_s=60.0, logger=log)
# What publishing on a channel whose connection is gone (or not back yet) raises.
BROKER_DOWN_ERRORS: tuple[type[Exception], ...] = (ChannelInvalidStateError, AMQPConnectionError)

ERROR_CODE_HEADER = "x-error-code"
ERROR_MESSAGE_HEADER = "x-error-message"
ORIGINAL_ROUTING_KEY_HEADER = "x-original-routing-key"
ORIGINAL_EXCHANGE_HEADER = "x-original-exchange"
PARKED_HEADER = "x-dead-letter-parked"  # {code, message} of a dead letter the DLQ refused
MAX_HEADER_TEXT = 1000
MAX_ERROR_CODE = 64
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]*")
KEPT_WHEN_UNROUTED = frozenset(t for t, spec in EVENTS.items() if spec.direction == "result")
MAX_PEEK_BYTES = 10 * 1024 * 1024
PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event as it goes on the wire, built once for every copy of it that is sent (the hub,
    `reply_to`, the unrouted queue): the body is encoded once, and the AMQP properties are
    built straight from the envelope (no aio_pika.Message, which rebuilds them per publish)."""

    body: bytes
    properties: Basic.Properties


def event_message(envelope: Envelope, *, body: bytes | None = None,
                  headers: dict[str, FieldValue] | None = None) -> Outgoing:
    """`envelope` as a persistent message; `body` when it was encoded already (it must be
    `encode(envelope)`, as the job ledger records it)."""
    return Outgoing(body if body is not None else encode(envelope), Basic.Properties(
        content_type=CLOUDEVENTS_CONTENT_TYPE,
        delivery_mode=PERSISTENT,
        message_id=envelope.id,
        correlation_id=envelope.correlation,
        message_type=envelope.type,
        timestamp=envelope.time or datetime.now(UTC),
        headers=headers,
    ))


def copy_of(incoming: AbstractIncomingMessage,
            headers: Mapping[str, FieldValue]) -> aio_pika.Message:
    """A persistent copy of an incoming message with extra headers (for retries and DLQ)."""
    merged: dict[str, FieldValue] = dict(incoming.headers or {})
    merged.update(headers)
    return aio_pika.Message(
        body=incoming.body,
        headers=merged,
        content_type=incoming.content_type,
        content_encoding=incoming.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=incoming.priority,
        correlation_id=incoming.correlation_id,
        reply_to=incoming.reply_to,
        message_id=incoming.message_id,
        timestamp=incoming.timestamp,
        type=incoming.type,
        app_id=incoming.app_id,
        user_id=None,
    )


class Publisher:
    def __init__(self, channel: AbstractChannel, hub: AbstractExchange, topology: Topology,
                 dead_letter_exchange: AbstractExchange, *, signer: RetrySigner,
                 notices: tuple[AbstractChannel, AbstractExchange] | None = None) -> None:
        self._channel = channel
        self._signer = signer
        self.dead_letters = DeadLetterAlarm()
        self._hub = hub
        self._notices = notices
        self._dlx = dead_letter_exchange
        self._topology = topology

    async def publish_event(self, envelope: Envelope, *, reply_to: str | None = None,
                            body: bytes | None = None) -> None:
        """Publish to the hub (routing key = type) and, when asked, a copy to `reply_to`.
        `body`: the envelope already encoded (`encode(envelope)`), so it is not encoded again."""
        message = event_message(envelope, body=body)
        keep = envelope.type in KEPT_WHEN_UNROUTED
        if not keep and self._notices is not None:
            await self._publish_notice(envelope, message, reply_to)
            return
        try:
            await send(self._channel, self._hub.name, message, envelope.type, mandatory=keep)
        except PublishError as error:
            if not _is_return(error):
                raise
            metrics.EVENTS_UNROUTED.labels(envelope.type).inc()
            UNROUTED_WARNING(event_type=envelope.type, event_id=envelope.id)
            kept = event_message(envelope, body=message.body, headers={
                ORIGINAL_ROUTING_KEY_HEADER: envelope.type,
                ORIGINAL_EXCHANGE_HEADER: self._hub.name})
            await send(self._channel, "", kept, self._topology.unrouted.name)
        if reply_to:
            await self._send_reply(envelope, message, reply_to)

    async def _publish_notice(self, envelope: Envelope, message: Outgoing,
                              reply_to: str | None) -> None:
        assert self._notices is not None
        notice_channel, notice_hub = self._notices
        try:
            await send(notice_channel, notice_hub.name, message, envelope.type, mandatory=False)
            if reply_to:
                await send(notice_channel, "", message, reply_to, mandatory=False)
        except BROKER_DOWN_ERRORS as error:
            metrics.NOTICES_DROPPED.labels(envelope.type).inc()
            NOTICE_DROPPED_WARNING(event_type=envelope.type, error=type(error).__name__)

    async def _send_reply(self, envelope: Envelope, message: Outgoing, reply_to: str) -> None:
        # A caller that stopped waiting has taken its reply queue away; that is not our failure.
        try:
            await send(self._channel, "", message, reply_to, mandatory=True)
        except PublishError as error:
            if not _is_return(error):
                raise
            log.info("reply_to.gone", reply_to=reply_to, event_type=envelope.type)

    async def retry_later(self, incoming: AbstractIncomingMessage, *, state: RetryState,
                          delay_s: float) -> int:
        """Send a copy to the delay queue that fits `delay_s`; it returns to the work queue
        carrying `state` (attempt, rate-limit wait so far, provider calls paid), signed."""
        step, queue = self._topology.delay_queue_for(delay_s)
        headers = self._signer.headers(incoming.message_id, state)
        await send(self._channel, "", copy_of(incoming, headers), queue.name)
        return step

    async def dead_letter(self, incoming: AbstractIncomingMessage, *, code: str,
                          reason: str) -> None:
        """Into the dead-letter queue, confirmed; when the queue refuses it, parked instead
        (confirmed too), so the caller may ack the original either way."""
        reason = reason[:MAX_HEADER_TEXT]
        routing_key, exchange = _original_route(incoming, self._topology.work.name)
        headers: dict[str, FieldValue] = {
            ERROR_CODE_HEADER: code,
            ERROR_MESSAGE_HEADER: reason,
            ORIGINAL_ROUTING_KEY_HEADER: routing_key,
            ORIGINAL_EXCHANGE_HEADER: exchange,
        }
        letter = copy_of(incoming, headers)
        if letter.headers is not None:  # a parked copy's mark ends here (and never replays)
            letter.headers.pop(PARKED_HEADER, None)
        try:
            await send(self._channel, self._dlx.name, letter, routing_key or "unknown")
        except DeliveryError as refused:  # a nack (queue full) or a return (nothing bound)
            await self._park(incoming, headers, code=code, reason=reason,
                             why=_refusal(refused))
            return
        self.dead_letters.accepted()

    async def _park(self, incoming: AbstractIncomingMessage, headers: dict[str, FieldValue],
                    *, code: str, reason: str, why: str) -> None:
        step, queue = self._topology.delays[-1]
        parked = copy_of(incoming, {**headers,
                                    PARKED_HEADER: {"code": code, "message": reason}})
        await send(self._channel, "", parked, queue.name)
        self.dead_letters.parked()
        log.error("dead_letter.parked", code=code, why=why, parked_in=queue.name,
                  back_in_s=step, parked_since_alarm=self.dead_letters.parked_count)


async def send(channel: AbstractChannel, exchange: str, message: Outgoing | aio_pika.Message,
               routing_key: str, *, mandatory: bool = True) -> None:
    """`Exchange.publish` (mandatory by default, as there), minus waiting until the frame
    has been written to the socket.

    aiormq holds the channel's lock from a publish until the connection's writer task has
    written and drained its frame: each publish on a channel then waits for the one before it
    and for two turns of the event loop. With a thousand requests in flight a turn takes
    milliseconds, so a channel published at most a few hundred events a second and results
    queued behind it (bench/run_all.py, platform rate). Unwaited, the lock is held only while
    the frame enters the connection's (bounded) write queue; a confirmed publish still returns
    once the broker confirms it, or raises what it returned or refused, in the same order.
    What the socket has not yet taken stays bounded by the requests in flight, which each wait
    for their result's confirm."""
    if channel.is_closed:
        raise ChannelInvalidStateError(f"{channel!r} closed")
    underlay = await channel.get_underlay_channel()
    assert isinstance(underlay, aiormq.Channel)  # its publish takes `wait`; the abc's does not
    await underlay.basic_publish(message.body, exchange=exchange, routing_key=routing_key,
                                 properties=message.properties, mandatory=mandatory,
                                 wait=False)


def _is_return(error: PublishError) -> bool:
    return isinstance(error.frame, Basic.Return)


def _refusal(error: DeliveryError) -> str:
    if isinstance(error.frame, Basic.Return):
        return f"unroutable: {error.frame.reply_text}"
    return "refused: the dead-letter queue is full"


def _original_route(incoming: AbstractIncomingMessage, work_queue: str) -> tuple[str, str]:
    """Where the message first came from. A parked copy comes back from a delay queue under
    the work queue's name, so the route recorded when it was parked is kept. A request that
    reached the work queue by its name (a retry copy back from a delay queue, a replayed dead
    letter) is filed under its own request type, read from the body: only a request type the
    service knows, so a body cannot file itself under any name it likes."""
    headers = incoming.headers or {}
    if parked_dead_letter(headers) is not None:
        key, exchange = headers.get(ORIGINAL_ROUTING_KEY_HEADER), headers.get(
            ORIGINAL_EXCHANGE_HEADER)
        if isinstance(key, str) and isinstance(exchange, str):
            return key, exchange
    routing_key = incoming.routing_key or ""
    if routing_key == work_queue:
        request_type = peek(incoming.body, MAX_PEEK_BYTES).request_type
        if request_type in REQUEST_TYPES:
            return request_type, incoming.exchange or ""
    return routing_key, incoming.exchange or ""


def parked_dead_letter(headers: Mapping[str, object] | None) -> tuple[str, str] | None:
    """(code, message) when this message is a parked dead letter, to be dead-lettered again
    without being processed; None for anything else, a malformed mark included.

    A caller can forge the header too. That only gets its own message dead-lettered unprocessed
    under a code of its choosing, which it could have had by sending garbage: harmless."""
    mark = (headers or {}).get(PARKED_HEADER)
    if not isinstance(mark, Mapping):
        return None
    code, message = _text(mark.get("code")), _text(mark.get("message"))
    if code is None or not _ERROR_CODE.fullmatch(code) or len(code) > MAX_ERROR_CODE:
        return None
    return code, (message or "")[:MAX_HEADER_TEXT]


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


class DeadLetterAlarm:
    """Up while dead letters are being parked because the dead-letter queue refuses them;
    down again once it takes one. Read by heartbeats and exported as a gauge."""

    def __init__(self) -> None:
        self.parked_count = 0  # parked since the alarm went up
        metrics.DEAD_LETTER_QUEUE_FULL.set(0)

    @property
    def raised(self) -> bool:
        return self.parked_count > 0

    def parked(self) -> None:
        self.parked_count += 1
        metrics.DEAD_LETTERS_PARKED.inc()
        metrics.DEAD_LETTER_QUEUE_FULL.set(1)

    def accepted(self) -> None:
        if self.raised:
            log.warning("dead_letter.queue_accepts_again", parked=self.parked_count)
        self.parked_count = 0
        metrics.DEAD_LETTER_QUEUE_FULL.set(0)
