"""Test helpers that act on the broker directly: raw publishing, a tap on the hub, the DLQ."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import orjson

from llm_consumer.bus.topology import build_topology
from llm_consumer.settings import Settings
from tests.conftest import HUB_URL

# The most one broker operation of these helpers may take: a broker that stops answering fails
# the call, and the test says where, instead of holding the run until the suite's time-out.
BROKER_OP_S = 30.0


async def publish_raw(settings: Settings, body: bytes, *, routing_key: str,
                      headers: dict[str, Any] | None = None, reply_to: str | None = None,
                      priority: int | None = None) -> None:
    async with asyncio.timeout(BROKER_OP_S):
        connection = await aio_pika.connect(HUB_URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            hub = await channel.get_exchange(settings.hub_exchange)
            await hub.publish(aio_pika.Message(body=body, headers=headers or {},
                                               reply_to=reply_to, priority=priority),
                              routing_key=routing_key)


class Tap:
    """Every event published on the hub (or to one reply queue) while the tap is open."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self.queue_name = ""

    def of_type(self, event_type: str, request_id: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == event_type and (
            request_id is None or e["data"].get("request_id") == request_id)]

    async def wait_for(self, event_type: str, request_id: str | None = None, *,
                       count: int = 1, timeout_s: float = 30) -> list[dict[str, Any]]:
        async def until() -> list[dict[str, Any]]:
            while len(found := self.of_type(event_type, request_id)) < count:
                self._changed.clear()
                await self._changed.wait()
            return found

        return await asyncio.wait_for(until(), timeout_s)

    def add(self, body: bytes) -> None:
        self.events.append(orjson.loads(body))
        self._changed.set()


@asynccontextmanager
async def tap(settings: Settings, binding: str = "#") -> AsyncIterator[Tap]:
    """Collect events from the hub; with binding=None, a bare reply queue (for reply_to)."""
    connection = await aio_pika.connect(HUB_URL, timeout=BROKER_OP_S)
    async with connection:
        result = Tap()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            result.add(message.body)

        async with asyncio.timeout(BROKER_OP_S):
            channel = await connection.channel()
            hub = await channel.declare_exchange(settings.hub_exchange,
                                                 aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            if binding is not None:
                await queue.bind(hub, routing_key=binding)
            result.queue_name = queue.name
            await queue.consume(on_message)
        yield result


async def dead_letters(settings: Settings, *, expect: int, timeout_s: float = 20,
                       queue: str = "dead") -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Wait until the dead-letter queue holds `expect` messages; take (ack) and return them."""
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    name = topology.dead.name if queue == "dead" else topology.unrouted.name
    taken: list[aio_pika.abc.AbstractIncomingMessage] = []
    connection = await aio_pika.connect(HUB_URL, timeout=BROKER_OP_S)
    async with connection:
        async with asyncio.timeout(BROKER_OP_S):
            channel = await connection.channel()
            q = await channel.get_queue(name)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(taken) < expect and asyncio.get_running_loop().time() < deadline:
            async with asyncio.timeout(BROKER_OP_S):
                message = await q.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.1)
                continue
            taken.append(message)
    return taken


async def queue_depth(settings: Settings, which: str) -> int:
    async with asyncio.timeout(BROKER_OP_S):
        connection = await aio_pika.connect(HUB_URL)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(which, passive=True)
            return int(queue.declaration_result.message_count or 0)
