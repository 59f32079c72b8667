"""Redis round trips per request, counted on the real service.

    .venv/bin/python bench/redis_round_trips.py [--requests 20]

Runs the service in this process on the local RabbitMQ and Redis (under its own names), with the
tests' fake OpenAI server as the provider, and counts every write the service makes to a Redis
socket (one per command or pipeline: one round trip), by what it was: the job ledger's claim,
the admission script, and so on. Three phases: distinct requests (cache misses), the same
requests again (hits), and identical requests at the same time (single-flight).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' fake provider

from redis.asyncio.connection import AbstractConnection

from llm_consumer.app import run_service
from llm_consumer.auth import mint_token
from llm_consumer.client import build_request, send_and_wait
from llm_consumer.logging import configure_logging
from llm_consumer.settings import Settings
from llm_consumer.store import admission, feedback, jobs
from tests.conftest import HUB_URL, REDIS_URL, delete_topology
from tests.fakes.openai_server import FakeOpenAI

SECRET = "bench-" + "s" * 64
SCRIPTS = {hashlib.sha1(text.encode()).hexdigest().encode(): name for name, text in (
    ("claim.lua (job ledger)", jobs.CLAIM_SCRIPT), ("admit.lua", admission.ADMIT_SCRIPT),
    ("restamp.lua", admission.RESTAMP_SCRIPT), ("finish.lua", admission.FINISH_SCRIPT),
    ("tighten (provider feedback)", feedback.TIGHTEN_SCRIPT))}
sent: Counter[str] = Counter()


def _label(packed: Any) -> str:
    raw = b"".join(packed) if isinstance(packed, list) else bytes(packed)
    parts = raw[:300].split(b"\r\n")
    name = parts[2].upper() if len(parts) > 2 else b"?"
    if name == b"EVALSHA" and len(parts) > 4:
        return SCRIPTS.get(parts[4], "EVALSHA ?")
    return name.decode()


_send = AbstractConnection.send_packed_command


async def _counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
    sent[_label(command)] += 1
    await _send(self, command, check_health)


async def phase(settings: Settings, name: str, data: list[dict[str, Any]],
                concurrent: bool) -> None:
    token = mint_token(SECRET, subject="bench", permissions=["llm:content"])

    async def one(item: dict[str, Any]) -> None:
        await send_and_wait(str(settings.message_hub_url), settings.hub_exchange,
                            build_request("character.backstory", item), token=token,
                            timeout_s=60)

    sent.clear()
    if concurrent:
        await asyncio.gather(*(one(item) for item in data))
    else:
        for item in data:
            await one(item)
    counts = {k: v for k, v in sent.items() if k not in ("SET", "HELLO", "CLIENT")}
    print(f"\n{name}: {len(data)} requests")
    for label, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {label:32} {count:5}  ({count / len(data):.2f} per request)")
    print(f"  {'all':32} {sum(counts.values()):5}  "
          f"({sum(counts.values()) / len(data):.2f} per request)")


async def main(requests: int) -> None:
    AbstractConnection.send_packed_command = _counting  # type: ignore[method-assign]
    configure_logging("ERROR")
    tag = uuid.uuid4().hex[:8]
    async with FakeOpenAI() as fake:
        settings = Settings(message_hub_url=HUB_URL, redis_url=REDIS_URL,
                            hub_exchange=f"bench-{tag}", queue_prefix=f"bench-{tag}.",
                            redis_prefix=f"bench-{tag}:", secret_key=SECRET,
                            openai_api_key="sk-test", openai_base_url=fake.base_url,
                            instance_id=f"bench-{tag}", log_level="WARNING")
        stop, ready = asyncio.Event(), asyncio.Event()
        service = asyncio.create_task(run_service(settings, stop=stop, ready=ready))
        await ready.wait()
        sheets = [{"context": {"name": f"Hero {n}", "class": "Rogue"}} for n in range(requests)]
        await phase(settings, "cache misses (distinct, one at a time)", sheets, False)
        await phase(settings, "cache hits (the same again)", sheets, False)
        await phase(settings, "single-flight (identical, all at once)",
                    [{"context": {"name": "Twin", "class": "Bard"}}] * requests, True)
        print(f"\nprovider calls in all: {len(fake.chat_requests)}")
        stop.set()
        await service
        await delete_topology(settings)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    asyncio.run(main(parser.parse_args().requests))
