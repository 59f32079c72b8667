"""Fault-test plumbing: a result collector that survives broker connection closes, a batch
publisher, the service as a subprocess with its stderr drained, and the per-request ledger."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import orjson

from llm_consumer.bus.topology import build_topology
from llm_consumer.client import build_request
from llm_consumer.events import catalog
from llm_consumer.events.envelope import CLOUDEVENTS_CONTENT_TYPE
from llm_consumer.settings import Settings
from tests.cli.test_dlq import cli_env
from tests.conftest import HUB_URL, SECRET, token

RESULT_TYPES = (catalog.CONTENT_GENERATED, catalog.GENERATION_FAILED)


# --------------------------------------------------------------------------- collecting results


@dataclass(frozen=True, slots=True)
class Seen:
    event: dict[str, Any]
    at: float  # time.monotonic() when the collector took it


class Collector:
    """Events from a durable, non-exclusive queue bound to the hub, read by polling with
    basic.get over a connection that is reopened whenever the broker closes it. The queue keeps
    whatever arrives while no connection is open; it is deleted at the end."""

    def __init__(self, settings: Settings, bindings: Iterable[str]) -> None:
        self.settings = settings
        self.bindings = tuple(bindings)
        self.queue_name = f"{settings.queue_prefix}faults-results-{uuid.uuid4().hex[:8]}"
        self.seen: list[Seen] = []
        self.reconnects = 0
        self._ids: set[str] = set()
        self._changed = asyncio.Event()

    def of_type(self, event_type: str, request_id: str | None = None) -> list[Seen]:
        return [s for s in self.seen if s.event["type"] == event_type and (
            request_id is None or s.event["data"].get("request_id") == request_id)]

    async def wait_until(self, done: Any, *, timeout_s: float) -> None:
        """Wait until `done()` is true (re-checked whenever an event arrives)."""
        async def until() -> None:
            while not done():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout_s)

    async def _declare(
        self, connection: aio_pika.abc.AbstractConnection,
    ) -> aio_pika.abc.AbstractQueue:
        channel = await connection.channel()
        hub = await channel.declare_exchange(self.settings.hub_exchange,
                                             aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(self.queue_name, durable=True)
        for key in self.bindings:
            await queue.bind(hub, routing_key=key)
        return queue

    def _take(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event = orjson.loads(message.body)
        # Only the collector's own redelivery (the ack was lost with a closed connection) is
        # dropped; the same event published twice by the service is a duplicate to count.
        if message.redelivered and event["id"] in self._ids:
            return
        self._ids.add(event["id"])
        self.seen.append(Seen(event, time.monotonic()))
        self._changed.set()

    async def run(self) -> None:
        while True:
            try:
                connection = await aio_pika.connect(HUB_URL)
                async with connection:
                    queue = await self._declare(connection)
                    while True:
                        message = await queue.get(fail=False)
                        if message is None:
                            await asyncio.sleep(0.05)
                            continue
                        self._take(message)
                        await message.ack()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # aiormq cancels the pending calls of a connection the broker closed
                self.reconnects += 1
                await asyncio.sleep(0.2)
            except Exception:
                self.reconnects += 1
                await asyncio.sleep(0.2)

    async def declare(self) -> None:
        connection = await aio_pika.connect(HUB_URL)
        async with connection:
            await self._declare(connection)

    async def delete(self) -> None:
        connection = await aio_pika.connect(HUB_URL)
        async with connection:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(self.queue_name)


@asynccontextmanager
async def collect(settings: Settings, bindings: Iterable[str] = RESULT_TYPES,
                  ) -> AsyncIterator[Collector]:
    collector = Collector(settings, bindings)
    await collector.declare()  # bound before anything is published
    task = asyncio.create_task(collector.run())
    try:
        yield collector
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await collector.delete()


# --------------------------------------------------------------------------- requests


def marked_request(request_id: str) -> dict[str, Any]:
    """A backstory request whose context carries its own id, so provider calls map back to it."""
    return build_request("character.backstory", {"context": {"name": request_id}},
                         request_id=request_id)


async def publish_requests(settings: Settings, request_ids: Iterable[str]) -> None:
    connection = await aio_pika.connect(HUB_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        hub = await channel.get_exchange(settings.hub_exchange)
        for request_id in request_ids:
            request = marked_request(request_id)
            await hub.publish(aio_pika.Message(
                body=orjson.dumps(request), content_type=CLOUDEVENTS_CONTENT_TYPE,
                headers={"authorization": f"Bearer {token()}"}, message_id=request_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=request["type"])


def provider_calls(fake_openai: Any, request_ids: Iterable[str]) -> Counter[str]:
    """Chat-completion calls per request id, found by the marker in the prompt."""
    wanted = set(request_ids)
    calls: Counter[str] = Counter()
    for recorded in fake_openai.chat_requests:
        text = json.dumps(recorded.body.get("messages", []))
        hits = [r for r in wanted if r in text]
        calls[hits[0] if len(hits) == 1 else "<unmapped>"] += 1
    return calls


async def queue_state(settings: Settings) -> dict[str, tuple[int, int]]:
    """(ready messages, consumers) of the work, dead and delay queues."""
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    found = {}
    connection = await aio_pika.connect(HUB_URL)
    async with connection:
        channel = await connection.channel()
        for spec in (topology.work, topology.dead, *(q for _, q in topology.delays)):
            queue = await channel.declare_queue(spec.name, passive=True)
            result = queue.declaration_result
            found[spec.name] = (int(result.message_count or 0), int(result.consumer_count or 0))
    return found


async def settle(settings: Settings, collector: Collector, *, timeout_s: float = 20) -> None:
    """Wait until no copy of any request waits in the work or delay queues and no new event
    arrived for a while, so late duplicates (busy retries in delay queues) are counted."""
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    deadline = time.monotonic() + timeout_s
    quiet = 0
    last = len(collector.seen)
    while time.monotonic() < deadline and quiet < 4:
        await asyncio.sleep(0.5)
        state = await queue_state(settings)
        waiting = sum(n for name, (n, _) in state.items() if name != topology.dead.name)
        quiet = quiet + 1 if waiting == 0 and len(collector.seen) == last else 0
        last = len(collector.seen)


# --------------------------------------------------------------------------- the ledger


@dataclass
class Ledger:
    name: str
    request_ids: list[str]
    collector: Collector
    calls: Counter[str]
    fault_at: float
    expected_failures: frozenset[str] = frozenset()
    notes: dict[str, Any] = field(default_factory=dict)

    def results(self, request_id: str) -> int:
        return len(self.collector.of_type(catalog.CONTENT_GENERATED, request_id))

    @property
    def lost(self) -> list[str]:
        return [r for r in self.request_ids if self.results(r) == 0]

    @property
    def unexpected(self) -> list[dict[str, Any]]:
        known = set(self.request_ids)
        return [s.event for s in self.collector.seen
                if s.event["type"] in RESULT_TYPES and (
                    s.event["data"].get("request_id") not in known
                    or (s.event["type"] == catalog.GENERATION_FAILED
                        and s.event["data"].get("request_id") not in self.expected_failures))]

    @property
    def duplicate_results(self) -> int:
        return sum(max(0, self.results(r) - 1) for r in self.request_ids)

    @property
    def duplicate_calls(self) -> int:
        return sum(max(0, self.calls[r] - 1) for r in self.request_ids)

    @property
    def max_calls(self) -> int:
        return max((self.calls[r] for r in self.request_ids), default=0)

    @property
    def recovery_s(self) -> float:
        """From the fault to the first result of the last request to get one."""
        firsts = [min(s.at for s in self.collector.of_type(catalog.CONTENT_GENERATED, r))
                  for r in self.request_ids if self.results(r)]
        return max(0.0, max(firsts, default=self.fault_at) - self.fault_at)

    def report(self) -> None:
        per_request = {r[-8:]: (self.calls[r], self.results(r)) for r in self.request_ids}
        print(f"\n=== fault ledger: {self.name} ===")
        print(f"requests={len(self.request_ids)} lost={len(self.lost)} "
              f"unexpected={len(self.unexpected)} duplicate_provider_calls={self.duplicate_calls} "
              f"duplicate_results={self.duplicate_results} max_calls_per_request="
              f"{self.max_calls} unmapped_calls={self.calls['<unmapped>']} "
              f"recovery_s={self.recovery_s:.2f}")
        for key, value in self.notes.items():
            print(f"{key}={value}")
        print("per request (id tail: provider calls, results):", per_request)

    def check(self, *, max_calls_per_request: int, max_duplicate_results: int) -> None:
        self.report()
        assert self.lost == [], f"lost: {self.lost}"
        assert self.unexpected == [], f"unexpected: {self.unexpected}"
        assert self.calls["<unmapped>"] == 0
        assert self.max_calls <= max_calls_per_request, dict(self.calls)
        assert self.duplicate_results <= max_duplicate_results


# --------------------------------------------------------------------------- the process


@dataclass
class Process:
    process: asyncio.subprocess.Process
    lines: list[bytes]
    drain: asyncio.Task[None]


async def start_process(settings: Settings, fake_openai: Any, **extra: str) -> Process:
    """`python -m llm_consumer run`, ready; its stderr is read all along (a full pipe would
    block the service's logging)."""
    env = cli_env(settings)
    env.update({"SECRET_KEY": SECRET, "OPENAI_API_KEY": "sk-test",
                "OPENAI_BASE_URL": fake_openai.base_url, "REDIS_URL": settings.redis_url,
                "REDIS_PREFIX": settings.redis_prefix, "LOG_LEVEL": "INFO", **extra})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_consumer", "run", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    stderr = process.stderr
    lines: list[bytes] = []
    ready = asyncio.Event()

    async def drain() -> None:
        while line := await stderr.readline():
            lines.append(line)
            if b"service.ready" in line:
                ready.set()

    task = asyncio.create_task(drain())
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    assert ready.is_set(), b"".join(lines[-20:]).decode(errors="replace")
    return Process(process, lines, task)
