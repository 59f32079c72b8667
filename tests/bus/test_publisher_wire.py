"""What a result looks like on the wire, to a hub subscriber and to the caller's reply queue:
one message, built once (body and properties), so both copies are the same bytes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import aio_pika
import orjson
from pamqp.commands import Basic

from llm_consumer.app import caller_rules, open_broker
from llm_consumer.bus.publisher import Outgoing, Publisher, send
from llm_consumer.events import catalog
from llm_consumer.events.envelope import CLOUDEVENTS_CONTENT_TYPE, encode, new_event
from llm_consumer.events.results import TokenUsage, ValidationCompleted
from llm_consumer.settings import Settings


async def test_the_hub_copy_and_the_reply_copy_are_the_same_message(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    request_id = str(uuid.uuid4())
    result = new_event(catalog.VALIDATION_COMPLETED, ValidationCompleted(
        request_id=request_id, valid=True, score=1.0, issues=[], model_used="m",
        token_usage=TokenUsage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
        duration_ms=1), source="test")
    async with open_broker(settings) as broker:
        publisher = Publisher(broker.channel, broker.hub, broker.topology,
                              broker.dead_letter_exchange, signer=caller_rules(settings).signer)
        peer = await broker.channel.declare_queue(exclusive=True)
        await peer.bind(broker.hub, routing_key=catalog.VALIDATION_COMPLETED)
        caller = await broker.channel.declare_queue(exclusive=True)

        await publisher.publish_event(result, reply_to=caller.name, body=encode(result))

        copies = []
        for queue in (peer, caller):
            message = await _get(queue)
            copies.append(message)
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert message.content_type == CLOUDEVENTS_CONTENT_TYPE
            assert message.message_id == result.id
            assert message.correlation_id == result.correlation
            assert message.type == catalog.VALIDATION_COMPLETED
            assert message.timestamp is not None
            assert orjson.loads(message.body)["data"]["request_id"] == request_id
        assert copies[0].body == copies[1].body == encode(result)


async def _get(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    for _ in range(100):
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing arrived in {queue.name}")


async def test_publishes_at_once_on_one_channel_do_not_wait_for_the_connection_writer(
    settings_factory: Callable[..., Settings],
) -> None:
    """aiormq's write queue of 10 frames made a burst of publishes on one channel leave one per
    turn of the event loop, each waiting behind the channel's lock (bus/nodes.py)."""
    settings = settings_factory()
    async with open_broker(settings) as broker:
        peer = await broker.notice_channel.declare_queue(exclusive=True)
        await peer.bind(broker.notice_hub, routing_key="test.burst")
        sends = [asyncio.create_task(send(broker.notice_channel, broker.notice_hub.name,
                                          Outgoing(b"{}", Basic.Properties()), "test.burst",
                                          mandatory=False)) for _ in range(500)]
        for _ in range(5):  # a few turns of the loop; each send needs none when nothing waits
            await asyncio.sleep(0)
        done = sum(task.done() for task in sends)
        await asyncio.gather(*sends)
        assert done == 500, f"{done} of 500 publishes left within five turns of the loop"
        arrived = 0
        for _ in range(100):  # and all of them reach the broker
            arrived = (await peer.declare()).message_count or 0
            if arrived == 500:
                break
            await asyncio.sleep(0.05)
        assert arrived == 500
