"""B0, the baseline: a bare aio-pika consumer on the same broker, as cheap as a worker can be.

    .venv/bin/python bench/b0_echo.py --exchange bench-b0 --queue bench-b0.requests \
        --ready-file /tmp/b0.ready [--prefetch 1024]

It declares a topic exchange and a durable work queue (bound to `content.requested`, with the
service's `x-max-priority`), and for every delivery: parses the JSON body, publishes a small
persistent `content.generated` reply to the exchange with publisher confirms, then acks. No
auth, no Redis, no provider: what is left is the broker round trip every worker pays. With
`--delay-s 1` it waits a second before replying, as if it called a slow provider: the ceiling of
the concurrency benchmark on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika
import orjson
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

RESULT_TYPE = "content.generated"


def handler(hub: AbstractExchange,
            delay_s: float) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    async def on_message(message: AbstractIncomingMessage) -> None:
        request = orjson.loads(message.body)
        if delay_s:
            await asyncio.sleep(delay_s)
        reply = orjson.dumps({"type": RESULT_TYPE, "data": {"request_id": request["id"]}})
        await hub.publish(aio_pika.Message(
            reply, content_type="application/cloudevents+json", type=RESULT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=message.correlation_id), routing_key=RESULT_TYPE)
        await message.ack()

    return on_message


async def serve(url: str, exchange: str, queue_name: str, prefetch: int, delay_s: float,
                ready: Path) -> None:
    connection = await aio_pika.connect_robust(url)
    async with connection:
        publishing = await connection.channel(publisher_confirms=True)
        hub = await publishing.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC,
                                                durable=True)
        consuming = await connection.channel(publisher_confirms=False)
        await consuming.set_qos(prefetch_count=prefetch)
        queue = await consuming.declare_queue(queue_name, durable=True,
                                              arguments={"x-max-priority": 9})
        await queue.bind(exchange, routing_key="content.requested")
        await queue.consume(handler(hub, delay_s))
        ready.write_text(str(os.getpid()))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("MESSAGE_HUB_URL",
                                                        "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--prefetch", type=int, default=1024)
    parser.add_argument("--delay-s", type=float, default=0.0,
                        help="wait this long before replying (a provider's time)")
    parser.add_argument("--ready-file", type=Path, required=True)
    opts = parser.parse_args()
    asyncio.run(serve(opts.url, opts.exchange, opts.queue, opts.prefetch, opts.delay_s,
                      opts.ready_file))
