"""Memory per request waiting on the provider, on the real service.

    .venv/bin/python bench/memory_per_request.py [--requests 1000] [--json]

Starts the benchmark's stack (bench/perf/stack.py: the fake provider, `llm-consumer run` with
the benchmark's settings, CONCURRENCY 1,024), serves 50 warm-up requests, then has the provider
hold its answers for a minute and publishes `--requests` new requests at once. Once the provider
has received every call (all of them wait on it), the service's RSS is read again:
(RSS then - RSS after warm-up) / requests is the memory one waiting request costs. At most
CONCURRENCY requests are taken from the broker at once, so ask for no more than that.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: perf.*

import aio_pika
import orjson
from perf.loadgen import KIND, fresh_context
from perf.procs import rss_mib
from perf.stack import CONCURRENCY, HUB_URL, Stack

from llm_consumer.client import build_request

WARM_UP = 50
HOLD_S = 60.0


async def publish(stack: Stack, first: int, count: int) -> None:
    async with await aio_pika.connect(HUB_URL) as connection:
        channel = await connection.channel(publisher_confirms=True)
        hub = await channel.get_exchange(stack.names.hub)

        async def one(index: int) -> None:
            request_id = f"00000000-0000-4000-8000-{index:012x}"
            body = build_request(KIND, {"context": fresh_context(request_id)},
                                 request_id=request_id)
            await hub.publish(aio_pika.Message(
                orjson.dumps(body), headers={"authorization": f"Bearer {stack.token}"},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=body["type"])

        await asyncio.gather(*(one(index) for index in range(first, first + count)))


async def calls_reach(stack: Stack, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while await stack.provider_calls() < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the provider received {await stack.provider_calls()} calls "
                               f"of {count} in {timeout_s:g}s")
        stack.check_alive()
        await asyncio.sleep(0.2)


async def measure(requests: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as work:
        stack = Stack(Path(work))
        try:
            await stack.start()
            assert stack.service is not None
            pid = stack.service.pid
            idle = rss_mib(pid)
            await stack.configure_provider(delay_s=0.0)
            await publish(stack, 0, WARM_UP)
            await calls_reach(stack, WARM_UP, 60)
            await asyncio.sleep(1.0)  # the warm-up's answers published and settled
            warm = rss_mib(pid)
            await stack.configure_provider(delay_s=HOLD_S)
            await publish(stack, WARM_UP, requests)
            await calls_reach(stack, WARM_UP + requests, 60)
            await asyncio.sleep(1.0)
            waiting = rss_mib(pid)
        finally:
            await stack.close()
    return {"requests": requests, "rss_idle_mib": round(idle, 1),
            "rss_after_warm_up_mib": round(warm, 1), "rss_waiting_mib": round(waiting, 1),
            "kib_per_waiting_request": round((waiting - warm) * 1024 / requests, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    opts = parser.parse_args()
    if not 0 < opts.requests <= CONCURRENCY:
        parser.error(f"--requests must be 1 to {CONCURRENCY} (the service's CONCURRENCY)")
    found = asyncio.run(measure(opts.requests))
    if opts.json:
        sys.stdout.write(orjson.dumps(found).decode() + "\n")
        return
    print(f"RSS at idle {found['rss_idle_mib']} MiB, after {WARM_UP} warm-up requests "
          f"{found['rss_after_warm_up_mib']} MiB, with {found['requests']:,} waiting on the "
          f"provider {found['rss_waiting_mib']} MiB: {found['kib_per_waiting_request']} KiB "
          "per waiting request")


if __name__ == "__main__":
    main()
