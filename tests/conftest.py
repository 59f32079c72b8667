"""Shared fixtures: every test gets its own exchange, queues and Redis prefix on the real
local RabbitMQ and Redis (MESSAGE_HUB_URL / REDIS_URL, defaulting to the local servers)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import pytest
import redis.asyncio as aioredis

from llm_consumer.app import run_service
from llm_consumer.auth import mint_token
from llm_consumer.bus.topology import build_topology
from llm_consumer.client import Exchange, build_request, send_and_wait
from llm_consumer.settings import Settings

HUB_URL = os.environ.get("MESSAGE_HUB_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET = "test-secret-" + "s" * 64
ALL_SCOPES = ("llm:content", "llm:image", "llm:admin")


def make_settings(**overrides: Any) -> Settings:
    tag = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "message_hub_url": HUB_URL,
        "hub_exchange": f"test-hub-{tag}",
        "queue_prefix": f"test-{tag}.",
        "redis_url": REDIS_URL,
        "redis_prefix": f"test-{tag}:",
        "secret_key": SECRET,
        "instance_id": f"test-{tag}",
        "shutdown_grace_s": 10,
        "log_level": "DEBUG",
    }
    values.update(overrides)
    return Settings(**values)


def token(*scopes: str, subject: str = "tester", ttl_s: int = 300) -> str:
    return mint_token(SECRET, subject=subject, permissions=scopes or ALL_SCOPES, ttl_s=ttl_s)


async def delete_topology(settings: Settings) -> None:
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    connection = await aio_pika.connect(HUB_URL, timeout=30)
    async with connection, asyncio.timeout(60):  # a broker that stops answering fails here
        for spec in topology.queues:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(spec.name)
        for name in (topology.hub_exchange, topology.dead_letter_exchange):
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(name)
    client = aioredis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{settings.redis_prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


class Service:
    """The real service running in this event loop, and a peer's way to talk to it."""

    def __init__(self, settings: Settings, *, tune_gc: bool = False) -> None:
        self.settings = settings
        self.tune_gc = tune_gc  # as `run` does, in a process of its own
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(run_service(self.settings, stop=self.stop,
                                                    ready=self.ready,
                                                    tune_gc=self.tune_gc))
        done, _ = await asyncio.wait({self.task, asyncio.create_task(self.ready.wait())},
                                     timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()
        assert self.ready.is_set(), "service did not become ready"

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 60)

    async def request(self, kind: str, data: dict[str, Any], *, auth: str | None = None,
                      timeout_s: float = 60, request_id: str | None = None) -> Exchange:
        envelope = build_request(kind, data, request_id=request_id)
        return await self.send(envelope, auth=auth if auth is not None else token(),
                               timeout_s=timeout_s)

    async def send(self, envelope: dict[str, Any], *, auth: str | None,
                   timeout_s: float = 60) -> Exchange:
        return await send_and_wait(HUB_URL, self.settings.hub_exchange, envelope, token=auth,
                                   timeout_s=timeout_s)


@pytest.fixture
async def settings_factory() -> AsyncIterator[Callable[..., Settings]]:
    made: list[Settings] = []

    def factory(**overrides: Any) -> Settings:
        made.append(make_settings(**overrides))
        return made[-1]

    yield factory
    for settings in made:
        await delete_topology(settings)


@pytest.fixture
async def start_service(
    settings_factory: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    services: list[Service] = []

    async def start(**overrides: Any) -> Service:
        service = Service(settings_factory(**overrides))
        await service.start()
        services.append(service)
        return service

    yield start
    for service in services:
        await service.close()


@pytest.fixture
async def fake_openai() -> AsyncIterator[Any]:
    from tests.fakes.openai_server import FakeOpenAI

    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def openai_service(
    start_service: Callable[..., Awaitable[Service]], fake_openai: Any
) -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    """Start the service with the OpenAI provider pointed at the fake server."""

    async def start(**overrides: Any) -> Service:
        values = {"openai_api_key": "sk-test", "openai_base_url": fake_openai.base_url}
        values.update(overrides)
        return await start_service(**values)

    yield start
