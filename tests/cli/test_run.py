"""`llm-consumer run` as a process: start-up errors, SIGTERM drain and hand-back."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import Any

import orjson

from llm_consumer.bus.topology import build_topology
from llm_consumer.client import build_request
from llm_consumer.events import catalog
from llm_consumer.settings import Settings
from tests.cli.test_dlq import cli_env
from tests.conftest import token
from tests.fakes.openai_server import hang, reply
from tests.faults.ledger import start_process
from tests.hub import publish_raw, queue_depth, tap


async def send(settings: Settings) -> dict[str, Any]:
    request = build_request("character.backstory", {"context": {"name": "Mira"}})
    await publish_raw(settings, orjson.dumps(request), routing_key="content.requested",
                      headers={"authorization": f"Bearer {token()}"})
    return request


async def test_missing_secret_stops_startup_with_one_clear_line(settings_factory: Any) -> None:
    settings = settings_factory()
    env = cli_env(settings)
    env["MAX_ATTEMPTS"] = "0"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_consumer", "run", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "MAX_ATTEMPTS" in lines[0] and "greater than or equal to 1" in lines[0]
    env["MAX_ATTEMPTS"] = "3"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_consumer", "run", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert stderr.decode().strip() == (
        "error: invalid configuration: SECRET_KEY is required but not set")


async def test_sigterm_finishes_in_flight_work_and_exits_zero(settings_factory: Any,
                                                              fake_openai: Any) -> None:
    settings = settings_factory()
    fake_openai.script(reply(None, delay_s=2.0))
    service = await start_process(settings, fake_openai, SHUTDOWN_GRACE_S="20")
    process = service.process  # `service` keeps the stderr reader alive
    async with tap(settings, catalog.CONTENT_GENERATED) as hub:
        request = await send(settings)
        while not fake_openai.chat_requests:
            await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        await hub.wait_for(catalog.CONTENT_GENERATED, request["id"], timeout_s=20)
    assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_sigterm_hands_back_what_cannot_finish_in_the_grace(settings_factory: Any,
                                                                  fake_openai: Any) -> None:
    settings = settings_factory()
    fake_openai.script(hang(60))
    service = await start_process(settings, fake_openai, SHUTDOWN_GRACE_S="1")
    process = service.process
    request = await send(settings)
    while not fake_openai.chat_requests:
        await asyncio.sleep(0.05)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    assert time.monotonic() - started < 10
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    assert await queue_depth(settings, topology.work.name) == 1, "handed back to the queue"
    assert await queue_depth(settings, topology.dead.name) == 0, "not dead-lettered"
    # A new instance picks it up and finishes it.
    async with tap(settings, catalog.CONTENT_GENERATED) as hub:
        again = await start_process(settings, fake_openai)
        process = again.process
        await hub.wait_for(catalog.CONTENT_GENERATED, request["id"], timeout_s=20)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_a_second_interrupt_during_the_drain_exits_at_once(settings_factory: Any,
                                                                 fake_openai: Any) -> None:
    settings = settings_factory()
    fake_openai.script(hang(60))
    service = await start_process(settings, fake_openai, SHUTDOWN_GRACE_S="60")
    process = service.process
    await send(settings)
    while not fake_openai.chat_requests:
        await asyncio.sleep(0.05)
    process.send_signal(signal.SIGINT)
    while not any(b"service.stopping" in line for line in service.lines):
        await asyncio.sleep(0.05)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), 30) == 130
    assert time.monotonic() - started < 5, "not the 60 s grace"
    await service.drain
    said = b"".join(service.lines).decode()
    assert "second interrupt: exiting now without finishing the drain" in said
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    for _ in range(100):  # the broker requeues the unacked request as the connection drops
        if await queue_depth(settings, topology.work.name) == 1:
            break
        await asyncio.sleep(0.1)
    assert await queue_depth(settings, topology.work.name) == 1, "handed back, not lost"
