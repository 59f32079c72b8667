"""Redis round trips per request, split at the provider call, on the real service.

    .venv/bin/python bench/perf/round_trips.py [--requests 20]     # prints JSON

The service runs in this process (so its Redis socket can be watched) with the benchmark's
settings, against the tests' fake OpenAI server, also in this process. Every write the
service makes to a Redis socket is one round trip (a pipeline is one write); each is timed and
named (the Lua script behind an EVALSHA, or the commands of a pipeline). Requests go one at a
time, so a request's round trips are those between its publish and its result: the ones sent
before the fake provider received the call are "before" (the request waited for them), except
`restamp.lua`, which the service starts as a task right as the call leaves and does not await
("alongside"); the rest are "after". A second pass sends the same contexts again: cache hits.
The liveness heartbeat (a SET every few seconds) and connection set-up are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: perf.*, round trips
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # the repo: tests' fake provider

import orjson
from redis.asyncio.connection import AbstractConnection

from llm_consumer.app import run_service
from llm_consumer.client import build_request, send_and_wait
from llm_consumer.logging import configure_logging
from llm_consumer.settings import load_settings
from llm_consumer.store import admission, feedback, jobs, queue_index
from perf.loadgen import KIND, fresh_context
from perf.stack import (
    HUB_URL,
    Names,
    bench_token,
    delete_broker_objects,
    delete_redis_keys,
    service_env,
)
from tests.fakes.openai_server import FakeOpenAI

SCRIPTS = {hashlib.sha1(text.encode()).hexdigest().encode(): name for name, text in (
    ("claim.lua (the job claim)", jobs.CLAIM_SCRIPT), ("release.lua", jobs.RELEASE_SCRIPT),
    ("record (the job ledger)", jobs.RECORD_SCRIPT),
    ("lookup.lua (cache and single-flight)", admission.LOOKUP_SCRIPT),
    ("limits.lua", admission.LIMITS_SCRIPT), ("store.lua", admission.STORE_SCRIPT),
    ("usage", admission.USAGE_SCRIPT), ("restamp.lua", admission.RESTAMP_SCRIPT),
    ("tighten (provider feedback)", feedback.TIGHTEN_SCRIPT),
    ("queue index: add", queue_index.ADD_SCRIPT),
    ("queue index: started", queue_index.STARTED_SCRIPT),
    ("queue index: undo", queue_index.UNDO_SCRIPT))}
COMMAND = re.compile(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n")
EVALSHA = re.compile(rb"EVALSHA\r\n\$40\r\n([0-9a-f]{40})", re.IGNORECASE)
SET_UP = {"HELLO", "CLIENT", "SELECT", "PING", "SCRIPT"}
ALONGSIDE = "restamp.lua"
sent: list[tuple[float, str]] = []


def label(packed: Any) -> str | None:
    """What one socket write was: a script's name, a command, or a pipeline's commands."""
    raw = b"".join(packed) if isinstance(packed, list) else bytes(packed)
    sha = EVALSHA.search(raw[:200])
    if sha:
        return SCRIPTS.get(sha.group(1), f"EVALSHA {sha.group(1)[:8].decode()}")
    names = [n.decode().upper() for n in COMMAND.findall(raw)]
    names = [n for n in names if n not in ("MULTI", "EXEC")]
    if not names or set(names) <= SET_UP or (names == ["SET"] and b"instance:" in raw):
        return None
    return names[0] if len(names) == 1 else "pipeline(" + ",".join(names) + ")"


_send = AbstractConnection.send_packed_command


async def _timed(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
    name = label(command)
    if name is not None:
        sent.append((time.monotonic(), name))
    await _send(self, command, check_health)


def per_request(counts: Counter[str], requests: int) -> dict[str, float]:
    return {name: round(count / requests, 2) for name, count in counts.most_common()}


async def one(hub: str, token: str, context: dict[str, Any]) -> tuple[float, float]:
    started = time.monotonic()
    await send_and_wait(HUB_URL, hub, build_request(KIND, {"context": context}), token=token,
                        timeout_s=60)
    return started, time.monotonic()


async def measure(requests: int) -> dict[str, Any]:
    AbstractConnection.send_packed_command = _timed  # type: ignore[method-assign]
    configure_logging("ERROR")
    names, token = Names(), bench_token()
    async with FakeOpenAI() as fake:
        os.environ.update(service_env(names, fake.base_url, Path(os.devnull)))
        os.environ.pop("HEALTH_FILE")
        settings = load_settings()
        stop, ready = asyncio.Event(), asyncio.Event()
        service = asyncio.create_task(run_service(settings, stop=stop, ready=ready))
        await ready.wait()
        try:
            ids = [f"00000000-0000-4000-8000-{n:012x}" for n in range(requests + 3)]
            for warm in ids[:3]:  # scripts loaded, connections opened
                await one(names.hub, token, fresh_context(warm))
            before, alongside, after, hits = Counter[str](), Counter[str](), Counter[str](), \
                Counter[str]()
            for request_id in ids[3:]:
                sent.clear()
                await one(names.hub, token, fresh_context(request_id))
                called = fake.chat_requests[-1].received_at
                for at, name in sent:
                    bucket = alongside if name == ALONGSIDE else before if at < called else after
                    bucket[name] += 1
            for request_id in ids[3:]:
                sent.clear()
                await one(names.hub, token, fresh_context(request_id))
                hits.update(name for _, name in sent)
        finally:
            stop.set()
            await service
            await delete_broker_objects(names)
            await delete_redis_keys(names.redis_prefix)
    return {
        "requests": requests,
        "miss_before_provider": per_request(before, requests),
        "miss_alongside_provider": per_request(alongside, requests),
        "miss_after_provider": per_request(after, requests),
        "miss_before_total": round(sum(before.values()) / requests, 2),
        "miss_total": round((sum(before.values()) + sum(alongside.values())
                             + sum(after.values())) / requests, 2),
        "hit": per_request(hits, requests),
        "hit_total": round(sum(hits.values()) / requests, 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    result = asyncio.run(measure(parser.parse_args().requests))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
