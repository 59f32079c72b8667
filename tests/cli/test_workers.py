"""`llm-consumer run --workers 2` as a process over the real broker: two consumers on the work
queue, distinct instances, one health view, and one SIGTERM that drains both."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import orjson

from llm_consumer.bus.topology import build_topology
from llm_consumer.client import build_request
from llm_consumer.events import catalog
from llm_consumer.settings import Settings
from tests.cli.test_dlq import cli_env
from tests.conftest import HUB_URL, SECRET, token
from tests.fakes.openai_server import reply
from tests.hub import publish_raw, tap

REQUESTS = 10


async def send(settings: Settings, name: str) -> dict[str, Any]:
    """A request of its own (distinct contexts: no single-flight sharing one provider call)."""
    request = build_request("character.backstory", {"context": {"name": name}})
    await publish_raw(settings, orjson.dumps(request), routing_key="content.requested",
                      headers={"authorization": f"Bearer {token()}"})
    return request


async def consumers_on(name: str) -> int:
    connection = await aio_pika.connect(HUB_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.consumer_count or 0)


def logged(lines: list[bytes], event: str) -> list[dict[str, Any]]:
    found = []
    for line in lines:
        if event.encode() in line:
            found.append(orjson.loads(line))
    return found


async def until(condition: Any, timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.05)


async def test_two_workers_consume_and_one_sigterm_drains_both(
        settings_factory: Any, fake_openai: Any, tmp_path: Path) -> None:
    settings: Settings = settings_factory()
    health = tmp_path / "health.json"
    base = f"workers-{uuid.uuid4().hex[:6]}"
    env = cli_env(settings)
    env.update({"SECRET_KEY": SECRET, "OPENAI_API_KEY": "sk-test",
                "OPENAI_BASE_URL": fake_openai.base_url, "REDIS_URL": settings.redis_url,
                "REDIS_PREFIX": settings.redis_prefix, "LOG_LEVEL": "INFO",
                "INSTANCE_ID": base, "HEALTH_FILE": str(health), "HEARTBEAT_EVERY_S": "0.5",
                "SHUTDOWN_GRACE_S": "30"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_consumer", "run", "--workers", "2", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    stderr = process.stderr
    lines: list[bytes] = []

    async def read() -> None:
        while line := await stderr.readline():
            lines.append(line)

    reader = asyncio.create_task(read())
    try:
        await until(lambda: len(logged(lines, "service.ready")) == 2 or reader.done())
        ready = logged(lines, "service.ready")
        assert sorted(entry["instance"] for entry in ready) == [f"{base}-0", f"{base}-1"], (
            b"".join(lines[-20:]).decode(errors="replace"))
        assert {entry["event_loop"] for entry in ready} == {"uvloop"}  # EVENT_LOOP's default
        work = build_topology(settings.queue_prefix, settings.hub_exchange).work.name
        assert await consumers_on(work) == 2

        # One liveness view: the supervisor merges both workers' files into HEALTH_FILE.
        await until(lambda: health.exists())
        probe = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llm_consumer", "probe", "--json",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(probe.communicate(), 30)
        assert probe.returncode == 0
        view = orjson.loads(out.splitlines()[0])
        assert view["status"] == "ok"
        assert sorted(w["instance"] for w in view["workers"]) == [f"{base}-0", f"{base}-1"]

        async with tap(settings, catalog.CONTENT_GENERATED) as hub:
            # Each worker learns the provider's capabilities on its first call (later calls
            # wait for it): answered at once, spread over both by the broker.
            for batch in range(10):
                warm = [await send(settings, f"Warm {batch} {n}") for n in range(2)]
                for request in warm:
                    await hub.wait_for(catalog.CONTENT_GENERATED, request["id"], timeout_s=30)
                if len(logged(lines, "provider.capabilities")) >= 2:
                    break
            assert len(logged(lines, "provider.capabilities")) == 2
        before = len(fake_openai.chat_requests)
        fake_openai.script(*[reply(None, delay_s=5.0) for _ in range(REQUESTS)])
        async with tap(settings, catalog.CONTENT_GENERATED) as hub:
            requests = [await send(settings, f"Mira {n}") for n in range(REQUESTS)]
            await until(lambda: len(fake_openai.chat_requests) == before + REQUESTS)
            assert not hub.of_type(catalog.CONTENT_GENERATED), "all ten still in flight"
            process.send_signal(signal.SIGTERM)
            for request in requests:
                await hub.wait_for(catalog.CONTENT_GENERATED, request["id"], timeout_s=30)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        await reader
        stopping = logged(lines, "service.stopping")
        assert len(stopping) == 2, "each worker got the signal once and drained"
        assert sum(entry["in_flight"] for entry in stopping) == REQUESTS
        assert all(entry["in_flight"] > 0 for entry in stopping), "both had work to finish"
        assert len(logged(lines, "service.stopped")) == 2
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        reader.cancel()
