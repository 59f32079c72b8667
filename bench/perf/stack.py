"""What the benchmark runs against: the fake provider, the real service and B0, each a process
of its own under names no one else uses, and the clean-up of everything they declared."""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiohttp
import orjson
import redis.asyncio as aioredis

from llm_consumer.auth import mint_token
from llm_consumer.bus.topology import build_topology
from perf.procs import Child, spawn, wait_for_file

HUB_URL = os.environ.get("MESSAGE_HUB_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET = "bench-secret-" + "s" * 64
UNLIMITED = "100000000/minute"  # checked and recorded like any limit, never reached
CONCURRENCY = 1024
PROVIDER_DELAY_S = 5.0  # the slow provider of the concurrency and platform-rate runs (and B0's)


@dataclass(frozen=True, slots=True)
class Names:
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def hub(self) -> str:
        return f"bench-{self.tag}-hub"

    @property
    def queue_prefix(self) -> str:
        return f"bench-{self.tag}."

    @property
    def redis_prefix(self) -> str:
        return f"bench-{self.tag}:"

    @property
    def b0_exchange(self) -> str:
        return f"bench-{self.tag}-b0"

    @property
    def b0_queue(self) -> str:
        return f"bench-{self.tag}-b0.requests"

    @property
    def b0_slow_exchange(self) -> str:
        return f"bench-{self.tag}-b0slow"

    @property
    def b0_slow_queue(self) -> str:
        return f"bench-{self.tag}-b0slow.requests"


def service_env(names: Names, provider_url: str, health_file: Path) -> dict[str, str]:
    """`llm-consumer run` against the fake provider, every limit on but out of reach."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SECRET_"))}
    models = {"gpt-5-nano": {"requests": UNLIMITED, "tokens": "100000000000/minute"}}
    env.update({
        "MESSAGE_HUB_URL": HUB_URL, "REDIS_URL": REDIS_URL, "HUB_EXCHANGE": names.hub,
        "QUEUE_PREFIX": names.queue_prefix, "REDIS_PREFIX": names.redis_prefix,
        "INSTANCE_ID": f"bench-{names.tag}", "SECRET_KEY": SECRET,
        "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": provider_url,
        "LOG_LEVEL": "WARNING", "CONCURRENCY": str(CONCURRENCY), "HEALTH_FILE": str(health_file),
        "RESULT_TTL_S": "600", "CACHE_TTL_DEFAULT_S": "3600",
        "RATE_LIMIT_GLOBAL": UNLIMITED, "RATE_LIMIT_USER": UNLIMITED,
        "RATE_LIMIT_TEXT": UNLIMITED, "RATE_LIMIT_MODELS": orjson.dumps(models).decode(),
    })
    return env


class Stack:
    """`await stack.start()`, measure, `await stack.close()` (also after a failure)."""

    def __init__(self, work_dir: Path) -> None:
        self.names = Names()
        self.work_dir = work_dir
        self.provider: Child | None = None
        self.service: Child | None = None
        self.b0: Child | None = None
        self.b0_slow: Child | None = None
        self.provider_url = ""
        self.token = bench_token()

    async def start(self) -> None:
        work = self.work_dir
        port_file, health = work / "provider.port", work / "health.json"
        for path in (port_file, health):
            path.unlink(missing_ok=True)
        self.provider = spawn("provider", ["bench/fake_provider.py", "--port-file",
                                           str(port_file)], dict(os.environ), work)
        await wait_for_file(self.provider, port_file)
        self.provider_url = f"http://127.0.0.1:{port_file.read_text()}/v1"
        await self.start_service(workers=1)
        self.b0 = await self._b0("b0", self.names.b0_exchange, self.names.b0_queue, 0.0)
        self.b0_slow = await self._b0("b0-slow", self.names.b0_slow_exchange,
                                      self.names.b0_slow_queue, PROVIDER_DELAY_S)

    async def start_service(self, *, workers: int, settings: dict[str, str] | None = None) -> None:
        """`llm-consumer run --workers N` (with `settings` over the benchmark's), ready once its
        (merged) health file is written; a running service is stopped first (it shares the
        work queue)."""
        if self.service is not None:
            self.service.stop()
        health = self.work_dir / "health.json"
        for index in range(workers):
            Path(f"{health}.{index}").unlink(missing_ok=True)
        health.unlink(missing_ok=True)
        self.service = spawn(f"service-{workers}w",
                             ["-m", "llm_consumer", "run", "--workers", str(workers)],
                             {**service_env(self.names, self.provider_url, health),
                              **(settings or {})}, self.work_dir)
        await wait_for_file(self.service, health)

    async def _b0(self, name: str, exchange: str, queue: str, delay_s: float) -> Child:
        ready = self.work_dir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        child = spawn(name, ["bench/b0_echo.py", "--url", HUB_URL, "--exchange", exchange,
                             "--queue", queue, "--prefetch", str(CONCURRENCY), "--delay-s",
                             str(delay_s), "--ready-file", str(ready)], dict(os.environ),
                      self.work_dir)
        await wait_for_file(child, ready)
        return child

    async def configure_provider(self, *, delay_s: float, record: bool = False) -> None:
        await self._provider_call("POST", "/bench/config",
                                  {"delay_s": delay_s, "record": record})

    async def provider_calls(self) -> int:
        """Chat completions the fake provider has answered so far."""
        answer = await self._provider_call("POST", "/bench/config", {})
        return int(answer["calls"])  # type: ignore[index]

    async def provider_timings(self) -> dict[str, tuple[float, float]]:
        return await self._provider_call("GET", "/bench/timings")  # type: ignore[no-any-return]

    async def _provider_call(self, method: str, path: str, body: object = None) -> object:
        url = self.provider_url.removesuffix("/v1") + path
        async with aiohttp.ClientSession() as session, session.request(
                method, url, json=body) as response:
            response.raise_for_status()
            return orjson.loads(await response.read())

    def degraded_events(self) -> int:
        """`redis.unavailable` lines in the services' logs: a run in which the service lost
        Redis (its cache and shared limits off) measured less work than a healthy one."""
        return sum(log.read_text(errors="replace").count('"event": "redis.unavailable"')
                   for log in self.work_dir.glob("service-*.log"))

    def check_alive(self) -> None:
        for child in (self.provider, self.service, self.b0, self.b0_slow):
            if child is not None and not child.alive():
                raise RuntimeError(f"{child.name} died:\n{child.log_tail()}")

    async def close(self) -> None:
        for child in (self.b0_slow, self.b0, self.service, self.provider):
            if child is not None:
                child.stop()
        for name in ("provider.port", "health.json", "health.json.0", "health.json.1",
                     "b0.ready", "b0-slow.ready"):
            (self.work_dir / name).unlink(missing_ok=True)
        await delete_broker_objects(self.names)
        await delete_redis_keys(self.names.redis_prefix)


async def delete_index_queue(names: Names) -> None:
    """The queue index's queue: the broker keeps copying requests into it while it is bound,
    whether or not a service reads it."""
    index = build_topology(names.queue_prefix, names.hub).index
    assert index is not None
    connection = await aio_pika.connect(HUB_URL)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(index.name)


def bench_token() -> str:
    return mint_token(SECRET, subject="bench", permissions=["llm:content"], ttl_s=3600)


async def delete_broker_objects(names: Names) -> None:
    """The service's queues and exchanges, and B0's, under these names."""
    topology = build_topology(names.queue_prefix, names.hub)
    queues = [spec.name for spec in topology.queues] + [names.b0_queue, names.b0_slow_queue]
    exchanges = [names.hub, topology.dead_letter_exchange, names.b0_exchange,
                 names.b0_slow_exchange]
    connection = await aio_pika.connect(HUB_URL)
    async with connection:
        for name in queues:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
        for name in exchanges:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(name)


async def delete_redis_keys(prefix: str) -> int:
    client = aioredis.from_url(REDIS_URL)
    removed, batch = 0, []
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            removed += await client.unlink(*batch)
            batch = []
    if batch:
        removed += await client.unlink(*batch)
    await client.aclose()
    return removed
