"""How many messages a queue holds, asked of the broker every time."""

from __future__ import annotations

from aio_pika.abc import AbstractChannel


async def queue_depth(channel: AbstractChannel, name: str) -> int:
    """The broker's message count of queue `name` (a passive declare; raises when the queue
    does not exist, which closes `channel`).

    Asked on the AMQP channel itself: aio-pika's robust channel answers a repeated passive
    declare of a queue it knows from its cache, with the count of the first answer."""
    underlay = await channel.get_underlay_channel()
    declared = await underlay.queue_declare(name, passive=True)
    return int(declared.message_count or 0)
