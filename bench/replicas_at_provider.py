"""Three replicas, one limit, counted where it matters: at the provider.

    .venv/bin/python bench/replicas_at_provider.py [--requests 60] [--limit 10] [--window 2]

Starts three replicas of the service in this process (one hub, one work queue, one Redis
prefix; the local RabbitMQ and Redis), with the tests' fake OpenAI server as the provider and
`RATE_LIMIT_MODELS={"gpt-5-nano": "<limit>/<window>s"}`, sends distinct requests all at once
and prints, from the times the provider received the calls: the most calls in any window of
the limit's length, and the share of the limit used in the windows after the first.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' fake provider

from limiter_accuracy import most_in_window, use_after_first_window

from llm_consumer.app import run_service
from llm_consumer.auth import mint_token
from llm_consumer.client import build_request, send_and_wait
from llm_consumer.logging import configure_logging
from llm_consumer.settings import Settings
from tests.conftest import HUB_URL, REDIS_URL, delete_topology
from tests.fakes.openai_server import FakeOpenAI

SECRET = "bench-" + "s" * 64


async def main(requests: int, limit: int, window_s: float) -> None:
    configure_logging("ERROR")
    tag = uuid.uuid4().hex[:8]
    async with FakeOpenAI() as fake:
        common: dict[str, Any] = {
            "message_hub_url": HUB_URL, "redis_url": REDIS_URL, "hub_exchange": f"bench-{tag}",
            "queue_prefix": f"bench-{tag}.", "redis_prefix": f"bench-{tag}:",
            "secret_key": SECRET, "openai_api_key": "sk-test", "openai_base_url": fake.base_url,
            "rate_limit_text": "off", "rate_limit_models": {"gpt-5-nano": f"{limit}/{window_s}s"},
            "log_level": "ERROR"}
        replicas = [Settings(**common, instance_id=f"bench-{tag}-{n}") for n in range(3)]
        stop = asyncio.Event()
        services = []
        for settings in replicas:
            ready = asyncio.Event()
            services.append(asyncio.create_task(run_service(settings, stop=stop, ready=ready)))
            await ready.wait()
        token = mint_token(SECRET, subject="bench", permissions=["llm:content"], ttl_s=3600)
        started = time.monotonic()
        await asyncio.gather(*(send_and_wait(
            HUB_URL, replicas[0].hub_exchange,
            build_request("character.backstory", {"context": {"name": f"Hero {n}"}}),
            token=token, timeout_s=600) for n in range(requests)))
        elapsed = time.monotonic() - started
        stop.set()
        await asyncio.gather(*services)
        await delete_topology(replicas[0])
    times = [int(call.received_at * 1_000_000) for call in fake.chat_requests]
    window_us = int(window_s * 1_000_000)
    shares = use_after_first_window(times, limit, window_us, max(times))
    print(f"3 replicas, {requests} requests, limit {limit}/{window_s:g}s, {elapsed:.1f}s")
    print(f"provider calls: {len(times)}; most in any {window_s:g}s window at the provider: "
          f"{most_in_window(times, window_us)} (limit {limit})")
    print(f"limit used in windows after the first, up to the last call: "
          f"mean {sum(shares) / len(shares):.1%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--window", type=float, default=2.0)
    opts = parser.parse_args()
    asyncio.run(main(opts.requests, opts.limit, opts.window))
