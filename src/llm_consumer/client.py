"""A peer's side of the contract: publish a request and wait for its correlated result.

Used by `llm-consumer inject`, `llm-consumer demo` and the tests, exactly as a peer service
would talk to the hub.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import orjson
from aiormq.exceptions import PublishError

from llm_consumer.events import catalog
from llm_consumer.events.envelope import CLOUDEVENTS_CONTENT_TYPE
from llm_consumer.events.requests import ImageKind

FINAL_TYPES = frozenset({
    catalog.CONTENT_GENERATED, catalog.THEME_ANALYZED, catalog.VALIDATION_COMPLETED,
    catalog.IMAGE_GENERATED, catalog.GENERATION_FAILED,
})


class NoConsumer(Exception):
    """The hub routed the request to no queue: the service has never declared its queues."""


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


@dataclass
class Exchange:
    """What came back for one request: every event, in arrival order."""

    request: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e.get("type") in FINAL_TYPES), None)


async def send_and_wait(
    url: str,
    exchange_name: str,
    request: dict[str, Any],
    *,
    token: str | None,
    timeout_s: float,
    priority: int | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> Exchange:
    """Publish `request` with a private reply_to queue and collect events until the result.

    Raises TimeoutError when no final event arrives in time and NoConsumer when nothing is
    bound to the request's type on the hub.
    """
    result = Exchange(request)
    done = asyncio.Event()
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                event = orjson.loads(message.body)
                if event.get("data", {}).get("request_id") != request["id"]:
                    return
                result.events.append(event)
                if on_event:
                    on_event(event)
                if event.get("type") in FINAL_TYPES:
                    done.set()

        await replies.consume(on_reply)
        hub = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC,
                                             durable=True)
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
        await asyncio.wait_for(done.wait(), timeout_s)
    return result
