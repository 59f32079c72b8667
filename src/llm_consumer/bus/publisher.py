"""Persistent publishing. Results, retry copies and dead letters return only once the broker
has confirmed them.

Results go to the hub with `mandatory`; one the hub cannot route to any queue comes back as a
return and is kept in the unrouted queue instead, so a result never vanishes without a trace.
Notices (progress, job status, rate-limit notices, heartbeats) go out on a channel without
confirms when the app gives one: nothing waits on them, and a lost notice is superseded by the
next one or by the result. Notices nobody subscribed to are simply not delivered.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    FieldValue,
)
from aiormq.exceptions import PublishError
from pamqp.commands import Basic

from llm_consumer.bus.topology import Topology
from llm_consumer.events.catalog import EVENTS
from llm_consumer.events.envelope import CLOUDEVENTS_CONTENT_TYPE, Envelope, encode

log = structlog.get_logger(__name__)

ATTEMPT_HEADER = "x-attempt"
DEFERRED_HEADER = "x-deferred-s"  # seconds a request has waited in delay queues for rate limits
ERROR_CODE_HEADER = "x-error-code"
ERROR_MESSAGE_HEADER = "x-error-message"
ORIGINAL_ROUTING_KEY_HEADER = "x-original-routing-key"
ORIGINAL_EXCHANGE_HEADER = "x-original-exchange"
MAX_HEADER_TEXT = 1000
KEPT_WHEN_UNROUTED = frozenset(t for t, spec in EVENTS.items() if spec.direction == "result")


def event_message(envelope: Envelope, *, priority: int | None = None) -> aio_pika.Message:
    return aio_pika.Message(
        body=encode(envelope),
        content_type=CLOUDEVENTS_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=envelope.id,
        correlation_id=envelope.correlation,
        type=envelope.type,
        timestamp=envelope.time or datetime.now(UTC),
        priority=priority,
    )


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
                 dead_letter_exchange: AbstractExchange, *,
                 notices: tuple[AbstractChannel, AbstractExchange] | None = None) -> None:
        self._channel = channel
        self._hub = hub
        self._notices = notices
        self._dlx = dead_letter_exchange
        self._topology = topology

    async def publish_event(self, envelope: Envelope, *, reply_to: str | None = None) -> None:
        """Publish to the hub (routing key = type) and, when asked, a copy to `reply_to`."""
        message = event_message(envelope)
        keep = envelope.type in KEPT_WHEN_UNROUTED
        if not keep and self._notices is not None:
            notice_channel, notice_hub = self._notices
            await notice_hub.publish(message, routing_key=envelope.type, mandatory=False)
            if reply_to:
                await notice_channel.default_exchange.publish(
                    event_message(envelope), routing_key=reply_to, mandatory=False)
            return
        try:
            await self._hub.publish(message, routing_key=envelope.type, mandatory=keep)
        except PublishError as error:
            if not _is_return(error):
                raise
            log.warning("event.unrouted", event_type=envelope.type, event_id=envelope.id)
            message.headers = {ORIGINAL_ROUTING_KEY_HEADER: envelope.type,
                               ORIGINAL_EXCHANGE_HEADER: self._hub.name}
            await self._default().publish(message, routing_key=self._topology.unrouted.name)
        if reply_to:
            await self._send_reply(envelope, reply_to)

    async def _send_reply(self, envelope: Envelope, reply_to: str) -> None:
        # A caller that stopped waiting has taken its reply queue away; that is not our failure.
        try:
            await self._default().publish(event_message(envelope), routing_key=reply_to,
                                          mandatory=True)
        except PublishError as error:
            if not _is_return(error):
                raise
            log.info("reply_to.gone", reply_to=reply_to, event_type=envelope.type)

    async def retry_later(self, incoming: AbstractIncomingMessage, *, attempt: int,
                          delay_s: float, deferred_s: float | None = None) -> int:
        """Send a copy to the delay queue that fits `delay_s`; it returns to the work queue.
        `deferred_s`: the total rate-limit wait so far, carried in DEFERRED_HEADER."""
        step, queue = self._topology.delay_queue_for(delay_s)
        headers: dict[str, FieldValue] = {ATTEMPT_HEADER: attempt}
        if deferred_s is not None:
            headers[DEFERRED_HEADER] = round(deferred_s, 3)
        await self._default().publish(copy_of(incoming, headers), routing_key=queue.name)
        return step

    async def dead_letter(self, incoming: AbstractIncomingMessage, *, code: str,
                          reason: str) -> None:
        headers = {
            ERROR_CODE_HEADER: code,
            ERROR_MESSAGE_HEADER: reason[:MAX_HEADER_TEXT],
            ORIGINAL_ROUTING_KEY_HEADER: incoming.routing_key or "",
            ORIGINAL_EXCHANGE_HEADER: incoming.exchange or "",
        }
        await self._dlx.publish(copy_of(incoming, headers),
                                routing_key=incoming.routing_key or "unknown")

    def _default(self) -> AbstractExchange:
        return self._channel.default_exchange


def _is_return(error: PublishError) -> bool:
    return isinstance(error.frame, Basic.Return)
