"""Store tests run against the real local Redis, each under its own key prefix; a dedicated
redis-server (started and stopped by the test) where an outage is what is tested."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from llm_consumer.store.guard import Guard, Policy
from llm_consumer.store.keys import Keys
from llm_consumer.store.limits_config import LimitsConfig, ModelRates, Rate
from llm_consumer.store.usage import Price
from tests.conftest import REDIS_URL
from tests.ports import free_port


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def keys(redis: aioredis.Redis) -> AsyncIterator[Keys]:
    made = Keys(f"test-store-{uuid.uuid4().hex[:10]}:")
    yield made
    found = [k async for k in redis.scan_iter(match=f"{made.prefix}*")]
    if found:
        await redis.delete(*found)


def limits(*, global_: Rate | None = None, user: Rate | None = None,
           operations: dict[str, Rate | None] | None = None,
           models: dict[str, ModelRates] | None = None, replicas_hint: int = 3) -> LimitsConfig:
    return LimitsConfig(global_=global_, user=user, operations=operations or {},
                        models=models or {}, replicas_hint=replicas_hint)


def make_guard(redis: aioredis.Redis, keys: Keys, **overrides: Any) -> Guard:
    values: dict[str, Any] = {
        "limits": limits(), "policy": Policy("gpt-5-nano", 5.0, 1.0),
        "cache_ttl_default_s": 600, "cache_ttls": {},
        "prices": {"gpt-5-nano": Price(0.05, 0.4)},
    }
    values.update(overrides)
    return Guard(redis, keys, **values)


@pytest.fixture
def guard_factory(redis: aioredis.Redis, keys: Keys) -> Callable[..., Guard]:
    return lambda **overrides: make_guard(redis, keys, **overrides)



class RedisServer:
    """A throw-away redis-server on its own port, to stop and start again mid-test."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="llm-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port),
                                                                         timeout=0.1):
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout_s)
