"""QUEUE_TYPE=quorum on the shared RabbitMQ 3.10 node: what a quorum topology guarantees.

A poison message (one whose delivery keeps ending without an ack, as when it crashes the
consumer) is dead-lettered after DELIVERY_LIMIT deliveries; the delay queues still expire into
the work queue; priorities are not honoured by 3.x quorum queues (arrival order); an operator's
pre-declared quorum queue is adopted, a classic one where quorum is asked is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from structlog.testing import capture_logs

from llm_consumer.app import declare_topology, run_service
from llm_consumer.bus.declare import TopologyConflict
from llm_consumer.bus.topology import build_topology
from llm_consumer.settings import Settings
from tests.conftest import HUB_URL, Service, token
from tests.hub import publish_raw, tap

DELIVERY_LIMIT = 3
SHEET = {"context": {"name": "Mira Thornvale", "race": "Half-Elf", "class": "Rogue"},
         "theme": {"preset": "dark-fantasy"}}


async def declared(settings: Settings) -> aio_pika.abc.AbstractRobustConnection:
    """The service's topology (quorum) declared on a connection of the test's own."""
    connection = await aio_pika.connect_robust(HUB_URL)
    channel = await connection.channel()
    topology = build_topology(settings.queue_prefix, settings.hub_exchange,
                              queue_type="quorum", delivery_limit=DELIVERY_LIMIT)
    await declare_topology(connection, channel, topology)
    return connection


async def test_a_poison_message_ends_in_the_dead_letter_queue(
        settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    connection = await declared(settings)
    async with connection:
        channel = await connection.channel()
        work = await channel.get_queue(f"{settings.queue_prefix}requests")
        await channel.default_exchange.publish(aio_pika.Message(b"poison"),
                                               routing_key=work.name)
        deliveries = 0
        while (message := await work.get(fail=False, timeout=5)) is not None:
            deliveries += 1  # every delivery ends without an ack, as a crashing consumer's
            await message.nack(requeue=True)
            assert deliveries <= DELIVERY_LIMIT + 1
        dead = await channel.get_queue(f"{settings.queue_prefix}dead")
        # At-least-once dead-lettering hands the letter over asynchronously: wait for it.
        letter = None
        async with asyncio.timeout(30):
            while (letter := await dead.get(fail=False, timeout=5)) is None:
                await asyncio.sleep(0.05)
        assert letter.body == b"poison"
        assert deliveries == DELIVERY_LIMIT + 1  # the limit counts redeliveries
        assert letter.headers["x-first-death-reason"] == "delivery_limit"
        await letter.ack()


async def test_delay_queues_expire_into_the_work_queue(
        settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    connection = await declared(settings)
    async with connection:
        channel = await connection.channel()
        work = await channel.get_queue(f"{settings.queue_prefix}requests")
        arrived: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            if not arrived.done():
                arrived.set_result(message.body)

        await work.consume(on_message)
        started = asyncio.get_running_loop().time()
        await channel.default_exchange.publish(aio_pika.Message(b"retry copy"),
                                               routing_key=f"{settings.queue_prefix}delay.1s")
        assert await asyncio.wait_for(arrived, 10) == b"retry copy"
        assert asyncio.get_running_loop().time() - started >= 0.9


async def test_priorities_are_arrival_order_on_quorum_queues_of_3x(
        settings_factory: Callable[..., Settings]) -> None:
    """The documented guarantee on RabbitMQ 3.x: a quorum work queue delivers in arrival
    order whatever the priority (a classic one delivers priority 9 first)."""
    settings = settings_factory()
    connection = await declared(settings)
    async with connection:
        channel = await connection.channel()
        work = await channel.get_queue(f"{settings.queue_prefix}requests")
        for priority in (0, 9):
            await channel.default_exchange.publish(
                aio_pika.Message(str(priority).encode(), priority=priority),
                routing_key=work.name)
        first = await work.get(timeout=5)
        second = await work.get(timeout=5)
        assert (first.body, second.body) == (b"0", b"9")
        await first.ack()
        await second.ack()


async def test_a_pre_declared_quorum_work_queue_is_adopted_and_serves(
        start_service: Callable[..., Any], settings_factory: Callable[..., Settings],
        fake_openai: Any) -> None:
    """An operator declared the work queue as quorum (its own delivery limit, no priorities)
    before a service configured for classic queues: adopted with a warning, and it serves."""
    settings = settings_factory()
    async with await aio_pika.connect(HUB_URL) as connection:
        channel = await connection.channel()
        await channel.declare_queue(f"{settings.queue_prefix}requests", durable=True, arguments={
            "x-queue-type": "quorum", "x-delivery-limit": 10,
            "x-dead-letter-exchange": f"{settings.queue_prefix}dlx"})
    with capture_logs() as logs:
        service: Service = await start_service(
            openai_api_key="sk-test", openai_base_url=fake_openai.base_url,
            **{name: getattr(settings, name)
               for name in ("hub_exchange", "queue_prefix", "redis_prefix", "instance_id")})
    adopted = [e for e in logs if e["event"] == "topology.adopted"]
    assert [e["name"] for e in adopted] == [f"{settings.queue_prefix}requests"]
    assert "x-queue-type 'quorum'" in adopted[0]["differences"]
    exchange = await service.request("character.backstory", SHEET)
    assert exchange.final is not None and exchange.final["type"] == "content.generated"


async def test_a_classic_queue_where_quorum_is_asked_stops_start_up(
        settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(queue_type="quorum")
    async with await aio_pika.connect(HUB_URL) as connection:
        channel = await connection.channel()
        await channel.declare_queue(f"{settings.queue_prefix}requests", durable=True, arguments={
            "x-max-priority": 9, "x-dead-letter-exchange": f"{settings.queue_prefix}dlx"})
    with pytest.raises(TopologyConflict) as raised:
        await asyncio.wait_for(run_service(settings, stop=asyncio.Event()), 30)
    line = str(raised.value)
    assert line.startswith(f"queue '{settings.queue_prefix}requests' already exists with other "
                           "arguments: it has ")
    assert "x-queue-type classic" in line and "x-queue-type 'quorum'" in line
    assert "\n" not in line


async def test_the_whole_service_on_quorum_queues(
        openai_service: Callable[..., Any]) -> None:
    service: Service = await openai_service(queue_type="quorum", delivery_limit=DELIVERY_LIMIT)
    async with tap(service.settings, "content.generated") as events:
        await publish_raw(service.settings, b"not json", routing_key="content.requested",
                          headers={"authorization": f"Bearer {token()}"})
        exchange = await service.request("character.backstory", SHEET)
        assert exchange.final is not None and exchange.final["type"] == "content.generated"
        await events.wait_for("content.generated")
