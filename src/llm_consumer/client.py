"""A peer's side of the contract: publish a request and wait for its correlated result.

Used by `llm-consumer inject`, `llm-consumer demo` and the tests, exactly as a peer service
would talk to the hub. `open_hub` is the one way the CLI connects to the broker: a failure to
connect is a `BrokerUnavailable` whose message is one line naming the cause.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractConnection
from aiormq.exceptions import (
    AMQPConnectionError,
    ChannelLockedResource,
    ChannelNotFoundEntity,
    ProbableAuthenticationError,
    ProtocolSyntaxError,
    PublishError,
)
from yarl import URL

from llm_consumer.events import catalog
from llm_consumer.events.envelope import CLOUDEVENTS_CONTENT_TYPE
from llm_consumer.events.requests import ImageKind

FINAL_TYPES = frozenset({
    catalog.CONTENT_GENERATED, catalog.THEME_ANALYZED, catalog.VALIDATION_COMPLETED,
    catalog.IMAGE_GENERATED, catalog.GENERATION_FAILED,
})
CONNECT_TIMEOUT_S = 10.0
ERROR_CODE_HEADER = "x-error-code"  # as bus/publisher.py writes them on a dead letter
ERROR_MESSAGE_HEADER = "x-error-message"


class NoConsumer(Exception):
    """The hub routed the request to no queue: the service has never declared its queues."""


class BrokerUnavailable(Exception):
    """The broker could not be reached or refused the connection (one line, no password)."""


def where(url: str) -> str:
    """host:port of an AMQP URL, for messages (never its user or password)."""
    parsed = URL(url)
    port = parsed.port or (5671 if parsed.scheme == "amqps" else 5672)
    return f"{parsed.host}:{port}"


def describe_connection_error(error: BaseException, url: str) -> str:
    """Why connecting to `url` failed, as one line an operator can act on."""
    parsed = URL(url)
    user, vhost = parsed.user or "guest", parsed.path[1:] or "/"
    at = where(url)
    if isinstance(error, ProbableAuthenticationError):
        return (f"the broker at {at} refused user {user!r}: wrong user name or password "
                "in MESSAGE_HUB_URL")
    if isinstance(error, ProtocolSyntaxError) and "Connection.Close" in str(error):
        return (f"the broker at {at} refused virtual host {vhost!r} to user {user!r}: it does "
                "not exist or the user may not use it (the path of MESSAGE_HUB_URL)")
    if isinstance(error, TimeoutError):
        return f"the broker at {at} did not answer within {CONNECT_TIMEOUT_S:g}s"
    if isinstance(error, AMQPConnectionError | OSError):
        reason = error.args[-1] if error.args else type(error).__name__
        return (f"cannot reach the broker at {at} ({reason}): is RabbitMQ running there? "
                "(MESSAGE_HUB_URL)")
    return f"cannot connect to the broker at {at}: {type(error).__name__}: {error}"


CONNECT_ERRORS = (AMQPConnectionError, ProtocolSyntaxError, OSError, TimeoutError)


@asynccontextmanager
async def open_hub(nodes: Sequence[str], *,
                   timeout_s: float = CONNECT_TIMEOUT_S) -> AsyncIterator[AbstractConnection]:
    """A plain connection to the first node that answers; BrokerUnavailable when none does."""
    failure: tuple[BaseException, str] | None = None
    connection: AbstractConnection | None = None
    for url in nodes:
        try:
            connection = await aio_pika.connect(url, timeout=timeout_s)
            break
        except CONNECT_ERRORS as error:
            failure = (error, url)
    if connection is None:
        assert failure is not None
        raise BrokerUnavailable(describe_connection_error(*failure)) from None
    async with connection:
        yield connection


def request_type_for(kind: str) -> str:
    return catalog.IMAGE_REQUESTED if kind in {k.value for k in ImageKind} else (
        catalog.CONTENT_REQUESTED)


def build_request(kind: str, data: dict[str, Any], *, source: str = "/llm-consumer-cli",
                  request_id: str | None = None, subject: str | None = None) -> dict[str, Any]:
    """A CloudEvents envelope for a request of `kind` whose data are `data` plus the kind."""
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "id": request_id or str(uuid.uuid4()),
        "source": source,
        "type": request_type_for(kind),
        "time": datetime.now(UTC).isoformat(),
        "datacontenttype": "application/json",
        "data": {"kind": kind, **data},
    }
    if subject:
        envelope["subject"] = subject
    return envelope


@dataclass(frozen=True, slots=True)
class DeadLetterSeen:
    """The request itself came back through the dead-letter exchange."""

    code: str
    reason: str


@dataclass
class Exchange:
    """What came back for one request: every event, in arrival order."""

    request: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    dead_letter: DeadLetterSeen | None = None

    @property
    def final(self) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e.get("type") in FINAL_TYPES), None)


@dataclass(frozen=True, slots=True)
class Watch:
    """Where else a request's ending shows on the hub, besides its reply_to queue.

    generation.failed is published on the hub even when the service does not answer the
    request's reply_to (an unauthenticated caller, for one); a dead letter goes through the
    service's dead-letter exchange; `work_queue` is checked for a consumer."""

    dead_letter_exchange: str | None = None
    work_queue: str | None = None
    failures_on_hub: bool = True


async def send_and_wait(
    url: str | Sequence[str],
    exchange_name: str,
    request: dict[str, Any],
    *,
    token: str | None,
    timeout_s: float,
    priority: int | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    watch: Watch | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> Exchange:
    """Publish `request` with a private reply_to queue and collect events until the result.

    Raises TimeoutError when no final event arrives in time, NoConsumer when nothing is bound
    to the request's type on the hub, BrokerUnavailable when the broker cannot be reached.
    With `watch`, the request's generation.failed on the hub or its dead letter end the wait
    at once, and `on_notice` hears when no consumer is attached to the work queue.
    """
    watch = watch or Watch(failures_on_hub=False)
    result = Exchange(request)
    done = asyncio.Event()
    async with open_hub([url] if isinstance(url, str) else url) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                if _take(message, result, watch, on_event):
                    done.set()

        await replies.consume(on_reply)
        hub = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC,
                                             durable=True)
        if watch.failures_on_hub:
            await replies.bind(hub, routing_key=catalog.GENERATION_FAILED)
        if watch.dead_letter_exchange and await _exchange_exists(
                connection, watch.dead_letter_exchange):
            await replies.bind(watch.dead_letter_exchange, routing_key=request["type"])
        headers = {"authorization": f"Bearer {token}"} if token else {}
        message = aio_pika.Message(
            body=orjson.dumps(request),
            headers=headers,  # type: ignore[arg-type]
            content_type=CLOUDEVENTS_CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=request["id"],
            correlation_id=request.get("correlationid", request["id"]),
            type=request["type"],
            reply_to=replies.name,
            priority=priority,
        )
        try:
            await hub.publish(message, routing_key=request["type"], mandatory=True)
        except PublishError as error:
            raise NoConsumer(
                f"no queue on exchange {exchange_name!r} takes {request['type']!r}: "
                "start the service first (llm-consumer run)") from error
        if watch.work_queue and on_notice is not None:
            consumers = await consumer_count(connection, watch.work_queue)
            if consumers == 0:
                on_notice(f"no consumer is attached to {watch.work_queue}: the request waits "
                          "there until a service runs (llm-consumer run)")
        await asyncio.wait_for(done.wait(), timeout_s)
    return result


def _take(message: aio_pika.abc.AbstractIncomingMessage, result: Exchange, watch: Watch,
          on_event: Callable[[dict[str, Any]], None] | None) -> bool:
    """Record what `message` says about the request; True when it ends the wait."""
    request_id = result.request["id"]
    if message.exchange and watch.dead_letter_exchange == message.exchange:
        if not _is_request(message, request_id):
            return False
        headers = message.headers or {}
        result.dead_letter = DeadLetterSeen(str(headers.get(ERROR_CODE_HEADER, "broker")),
                                            str(headers.get(ERROR_MESSAGE_HEADER, "")))
        return True
    try:
        event = orjson.loads(message.body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict) or (
            event["data"].get("request_id") != request_id):
        return False
    if any(e.get("id") == event.get("id") for e in result.events):
        return False  # the same event through reply_to and through the hub
    result.events.append(event)
    if on_event:
        on_event(event)
    return event.get("type") in FINAL_TYPES


def _is_request(message: aio_pika.abc.AbstractIncomingMessage, request_id: str) -> bool:
    if message.message_id == request_id:
        return True
    with suppress(orjson.JSONDecodeError):
        body = orjson.loads(message.body)
        return isinstance(body, dict) and body.get("id") == request_id
    return False


async def _exchange_exists(connection: AbstractConnection, name: str) -> bool:
    """A passive declare on a channel of its own (a 404 closes the channel it runs on)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.declare_exchange(name, passive=True)
    except ChannelNotFoundEntity:
        return False
    with suppress(Exception):
        await channel.close()
    return True


async def consumer_count(connection: AbstractConnection, queue: str) -> int | None:
    """Consumers attached to `queue`; None when it does not exist (or is another
    connection's exclusive queue)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except (ChannelNotFoundEntity, ChannelLockedResource):
        return None
    with suppress(Exception):
        await channel.close()
    return int(declared.declaration_result.consumer_count or 0)


async def queue_exists(connection: AbstractConnection, queue: str) -> bool:
    return await consumer_count(connection, queue) is not None


async def collect_heartbeats(connection: AbstractConnection, exchange_name: str,
                             wait_s: float) -> list[dict[str, Any]]:
    """Every instance's latest service.heartbeat heard within `wait_s`, by instance name."""
    channel = await connection.channel()
    hub = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC,
                                         durable=True)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(hub, routing_key=catalog.SERVICE_HEARTBEAT)
    beats: dict[str, dict[str, Any]] = {}

    async def on_beat(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        with suppress(orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
            beat = orjson.loads(message.body)
            beats[str(beat["data"]["instance"])] = beat

    await queue.consume(on_beat, no_ack=True)
    await asyncio.sleep(wait_s)  # heartbeats come every HEARTBEAT_EVERY_S: listen that long
    return [beats[name] for name in sorted(beats)]
