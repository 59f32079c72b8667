"""Ops tools for the dead-letter and unrouted queues: list, show, replay, purge.

Messages are read with basic.get and held unacked while we look; whatever is not replayed is
handed back with a requeue. A replayed copy is confirmed by the broker before its dead letter is
acked, so a crash in between leaves a duplicate at worst, never a loss. What is shown has its
secrets redacted (bus/redaction.py); what is replayed keeps the original headers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, FieldValue

from llm_consumer.bus.publisher import (
    ERROR_CODE_HEADER,
    ERROR_MESSAGE_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    PARKED_HEADER,
    copy_of,
)
from llm_consumer.bus.redaction import redact_headers
from llm_consumer.bus.retry_state import STATE_HEADERS
from llm_consumer.bus.topology import Topology
from llm_consumer.events.parsing import peek

DIAGNOSTIC_HEADERS = (*STATE_HEADERS, ERROR_CODE_HEADER, ERROR_MESSAGE_HEADER,
                      ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, "x-death",
                      "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                      "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason",
                      PARKED_HEADER)
PEEK_LIMIT_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message: AbstractIncomingMessage
    position: int

    @property
    def headers(self) -> dict[str, FieldValue]:
        return dict(self.message.headers or {})

    @property
    def shown_headers(self) -> dict[str, object]:
        """The headers with secrets redacted: what any output of a dead letter shows."""
        return redact_headers(self.headers)

    @property
    def routing_key(self) -> str:
        original = self.headers.get(ORIGINAL_ROUTING_KEY_HEADER)
        return original if isinstance(original, str) and original else (
            self.message.routing_key or "")

    @property
    def error_code(self) -> str:
        return str(self.headers.get(ERROR_CODE_HEADER, "broker"))

    @property
    def error_message(self) -> str:
        return str(self.headers.get(ERROR_MESSAGE_HEADER, self.headers.get(
            "x-first-death-reason", "")))

    @property
    def request_id(self) -> str | None:
        return peek(self.message.body, PEEK_LIMIT_BYTES).request_id

    @property
    def kind(self) -> str | None:
        return peek(self.message.body, PEEK_LIMIT_BYTES).kind

    @property
    def timestamp(self) -> datetime | None:
        return self.message.timestamp


def summary(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter as `dlq list --json` prints it (headers redacted)."""
    return {
        "position": letter.position,
        "request_id": letter.request_id,
        "message_id": letter.message.message_id,
        "type": letter.routing_key,
        "kind": letter.kind,
        "code": letter.error_code,
        "reason": letter.error_message,
        "time": letter.timestamp.isoformat(timespec="seconds") if letter.timestamp else None,
        "headers": letter.shown_headers,
    }


@dataclass(frozen=True, slots=True)
class Filter:
    code: str | None = None
    event_type: str | None = None
    request_id: str | None = None

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (self.code is None or letter.error_code == self.code)
            and (self.event_type is None or letter.routing_key == self.event_type)
            and (self.request_id is None or self.request_id in (
                letter.request_id, letter.message.message_id))
        )


@asynccontextmanager
async def held_letters(channel: AbstractChannel, queue_name: str,
                       limit: int | None = None) -> AsyncIterator[list[DeadLetter]]:
    """Take up to `limit` messages off the queue unacked; requeue the ones left unsettled."""
    queue = await channel.get_queue(queue_name, ensure=True)
    letters: list[DeadLetter] = []
    try:
        while limit is None or len(letters) < limit:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            letters.append(DeadLetter(message, len(letters)))
        yield letters
    finally:
        for letter in letters:
            if not letter.message.processed:
                await letter.message.nack(requeue=True)


def replay_copy(letter: DeadLetter) -> aio_pika.Message:
    """The original request as it was sent: diagnostics dropped, attempts counted afresh."""
    message = copy_of(letter.message, {})
    message.headers = {k: v for k, v in letter.headers.items() if k not in DIAGNOSTIC_HEADERS}
    return message


async def replay(channel: AbstractChannel, topology: Topology, letters: list[DeadLetter],
                 *, on_each: Callable[[DeadLetter], None] | None = None) -> int:
    """Re-publish each letter (confirmed), then ack it. Requests go back to the work queue;
    kept events (from the unrouted queue) go back to the hub under their routing key."""
    hub = await channel.get_exchange(topology.hub_exchange, ensure=True)
    replayed = 0
    for letter in letters:
        copy = replay_copy(letter)
        if letter.headers.get(ORIGINAL_EXCHANGE_HEADER) == topology.hub_exchange and (
                letter.message.routing_key == topology.unrouted.name):
            await hub.publish(copy, routing_key=letter.routing_key, mandatory=False)
        else:
            await channel.default_exchange.publish(copy, routing_key=topology.work.name)
        await letter.message.ack()
        replayed += 1
        if on_each:
            on_each(letter)
    return replayed


