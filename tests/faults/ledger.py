"""Fault-test plumbing: a result collector that survives broker connection closes, a batch
publisher, the service as a subprocess with its stderr drained, and the per-request ledger."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
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
# The most any one broker operation of the test's own clients may take (connect, declare, get,
# a batch of publishes). A link that stops answering (a broker that neither replies nor closes)
# then fails the call, and the test says where, instead of holding the run until its time-out.
BROKER_OP_S = 30.0


# --------------------------------------------------------------------------- collecting results


@dataclass(frozen=True, slots=True)
class Seen:
    event: dict[str, Any]
    at: float  # time.monotonic() when the collector took it


class Collector:
    """Events from a durable, non-exclusive queue bound to the hub, read by polling with
    basic.get over a connection that is reopened whenever the broker closes it. The queue keeps
    whatever arrives while no connection is open; it is deleted at the end."""

    def __init__(self, settings: Settings, bindings: Iterable[str], *,
                 url: str = HUB_URL) -> None:
        self.settings = settings
        self.bindings = tuple(bindings)
        self.url = url
        self.queue_name = f"{settings.queue_prefix}faults-results-{uuid.uuid4().hex[:8]}"
        self.seen: list[Seen] = []
        self.reconnects = 0
        # content.generated per request id: how many, and when the first one came
        self.generated: Counter[str] = Counter()
        self.first_generated: dict[str, float] = {}
        self._ids: set[str] = set()
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()

    def of_type(self, event_type: str, request_id: str | None = None) -> list[Seen]:
        return [s for s in self.seen if s.event["type"] == event_type and (
            request_id is None or s.event["data"].get("request_id") == request_id)]

    def missing(self, request_ids: Iterable[str]) -> list[str]:
        """The requests without a content.generated yet."""
        return [r for r in request_ids if not self.generated[r]]

    async def wait_generated(self, request_ids: Iterable[str], *, timeout_s: float) -> None:
        """Wait until every request has a result; on time-out return quietly (the ledger
        that follows names what is missing)."""
        wanted = list(request_ids)
        with contextlib.suppress(TimeoutError):
            await self.wait_until(lambda: not self.missing(wanted), timeout_s=timeout_s)

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
        seen = Seen(event, time.monotonic())
        self.seen.append(seen)
        if event["type"] == catalog.CONTENT_GENERATED:
            request_id = str(event["data"].get("request_id"))
            self.generated[request_id] += 1
            self.first_generated.setdefault(request_id, seen.at)
        self._changed.set()

    async def run(self) -> None:
        """Poll until `stop()`; a connection that fails or stops answering is replaced. The
        loop ends on the flag, not on a cancellation the client library might absorb."""
        while not self._stopping.is_set():
            try:
                await self._poll()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # aiormq cancels the pending calls of a connection the broker closed
                self.reconnects += 1
            except Exception:  # a closed connection, or a call that got no answer in time
                self.reconnects += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.2)

    async def _poll(self) -> None:
        connection = await aio_pika.connect(self.url, timeout=BROKER_OP_S)
        async with connection:
            async with asyncio.timeout(BROKER_OP_S):
                queue = await self._declare(connection)
            while not self._stopping.is_set():
                async with asyncio.timeout(BROKER_OP_S):
                    message = await queue.get(fail=False)
                    if message is not None:
                        self._take(message)
                        await message.ack()
                if message is None:
                    await asyncio.sleep(0.05)

    async def stop(self, task: asyncio.Task[None]) -> None:
        """End `run` (its `task`): at the flag within one bounded call, else cancelled."""
        self._stopping.set()
        done, _ = await asyncio.wait({task}, timeout=BROKER_OP_S + 5)
        if not done:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
        assert done, "the collector did not stop"
        with contextlib.suppress(asyncio.CancelledError):
            task.result()

    async def declare(self) -> None:
        async with asyncio.timeout(BROKER_OP_S):
            connection = await aio_pika.connect(self.url)
            async with connection:
                await self._declare(connection)

    async def delete(self) -> None:
        async with asyncio.timeout(BROKER_OP_S):
            connection = await aio_pika.connect(self.url)
            async with connection:
                channel = await connection.channel()
                with contextlib.suppress(Exception):
                    await channel.queue_delete(self.queue_name)


@asynccontextmanager
async def collect(settings: Settings, bindings: Iterable[str] = RESULT_TYPES, *,
                  url: str = HUB_URL) -> AsyncIterator[Collector]:
    collector = Collector(settings, bindings, url=url)
    await collector.declare()  # bound before anything is published
    task = asyncio.create_task(collector.run())
    failed = True
    try:
        yield collector
        failed = False
    finally:
        # When the test already failed, its own error is the one to show, not the clean-up's
        # (a broker the fault left down cannot delete the queue).
        with contextlib.suppress(Exception) if failed else contextlib.nullcontext():
            await collector.stop(task)
            await collector.delete()


# --------------------------------------------------------------------------- requests


TEXT_KINDS = ("character.backstory", "character.combat", "character.equipment",
              "campaign.quest", "world.location", "world.environment")


def new_ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def marked_request(request_id: str, kind: str = "character.backstory") -> dict[str, Any]:
    """A request of a text kind answered with content.generated, whose context carries its own
    id, so provider calls map back to it."""
    return build_request(kind, {"context": {"name": request_id}}, request_id=request_id)


def mixed_kind(request_id: str) -> str:
    """Mostly backstories, and a share of the other kinds, fixed by the id."""
    pick = int(request_id[:8], 16) % (2 * len(TEXT_KINDS))
    return TEXT_KINDS[pick] if pick < len(TEXT_KINDS) else TEXT_KINDS[0]


async def publish_requests(settings: Settings, request_ids: Iterable[str], *,
                           url: str = HUB_URL,
                           kind_of: Callable[[str], str] | None = None,
                           batch: int = 50) -> None:
    """Persistent requests, published with confirms `batch` at a time; one token for all
    (valid for an hour: a soak's last requests wait in the queue for minutes)."""
    bearer = f"Bearer {token(ttl_s=3600)}"
    connection = await aio_pika.connect(url, timeout=BROKER_OP_S)
    async with connection:
        async with asyncio.timeout(BROKER_OP_S):
            channel = await connection.channel(publisher_confirms=True)
            hub = await channel.get_exchange(settings.hub_exchange)

        async def one(request_id: str) -> None:
            request = marked_request(request_id, kind_of(request_id) if kind_of else
                                     "character.backstory")
            await hub.publish(aio_pika.Message(
                body=orjson.dumps(request), content_type=CLOUDEVENTS_CONTENT_TYPE,
                headers={"authorization": bearer}, message_id=request_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=request["type"])

        ids = list(request_ids)
        for start in range(0, len(ids), batch):
            async with asyncio.timeout(BROKER_OP_S):
                await asyncio.gather(*(one(r) for r in ids[start:start + batch]))


UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def marker_of(body: dict[str, Any], wanted: set[str]) -> str | None:
    """The one wanted request id a provider call's prompt carries, else None."""
    hits = set(UUID_RE.findall(json.dumps(body.get("messages", [])))) & wanted
    return hits.pop() if len(hits) == 1 else None


def provider_calls(fake_openai: Any, request_ids: Iterable[str]) -> Counter[str]:
    """Chat-completion calls per request id, found by the marker in the prompt."""
    wanted = set(request_ids)
    calls: Counter[str] = Counter()
    for recorded in fake_openai.chat_requests:
        calls[marker_of(recorded.body, wanted) or "<unmapped>"] += 1
    return calls


async def wait_for_calls(fake_openai: Any, count: int, *, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while len(fake_openai.chat_requests) < count:
        assert time.monotonic() < deadline, f"only {len(fake_openai.chat_requests)} calls"
        await asyncio.sleep(0.02)


async def queue_state(settings: Settings, *, url: str = HUB_URL,
                      ) -> dict[str, tuple[int, int]]:
    """(ready messages, consumers) of the work, dead and delay queues."""
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    found = {}
    async with asyncio.timeout(BROKER_OP_S):
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            for spec in (topology.work, topology.dead, *(q for _, q in topology.delays)):
                queue = await channel.declare_queue(spec.name, passive=True)
                result = queue.declaration_result
                found[spec.name] = (int(result.message_count or 0),
                                    int(result.consumer_count or 0))
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
        state = await queue_state(settings, url=collector.url)
        waiting = sum(n for name, (n, _) in state.items() if name != topology.dead.name)
        quiet = quiet + 1 if waiting == 0 and len(collector.seen) == last else 0
        last = len(collector.seen)


async def assert_queues_empty(settings: Settings, *, url: str = HUB_URL,
                              ) -> dict[str, tuple[int, int]]:
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    state = await queue_state(settings, url=url)
    assert state[topology.work.name][0] == 0, "left in the work queue"
    assert state[topology.dead.name][0] == 0, "dead-lettered"
    return state


async def work_consumers(settings: Settings, *, url: str = HUB_URL) -> int:
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    return (await queue_state(settings, url=url))[topology.work.name][1]


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
        return self.collector.generated[request_id]

    @property
    def lost(self) -> list[str]:
        return self.collector.missing(self.request_ids)

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
        firsts = [self.collector.first_generated[r] for r in self.request_ids
                  if r in self.collector.first_generated]
        return max(0.0, max(firsts, default=self.fault_at) - self.fault_at)

    def report(self) -> None:
        per_request: dict[str, Any] = {r[-8:]: (self.calls[r], self.results(r))
                                       for r in self.request_ids}
        if len(per_request) > 60:  # a load test: the histogram, not every request
            per_request = {"(calls, results) -> requests": dict(Counter(per_request.values()))}
        print(f"\n=== fault ledger: {self.name} ===")
        print(f"requests={len(self.request_ids)} lost={len(self.lost)} "
              f"unexpected={len(self.unexpected)} duplicate_provider_calls={self.duplicate_calls} "
              f"duplicate_results={self.duplicate_results} max_calls_per_request="
              f"{self.max_calls} unauthorized_provider_calls={self.unauthorized_calls} "
              f"recovery_s={self.recovery_s:.2f}")
        for key, value in self.notes.items():
            print(f"{key}={value}")
        print("per request (id tail: provider calls, results):", per_request)

    @property
    def unauthorized_calls(self) -> int:
        """Provider calls that carry none of the test's (authorized) requests: the service
        paid for something nobody with a token asked for."""
        return self.calls["<unmapped>"]

    def check(self, *, max_calls_per_request: int, max_duplicate_results: int) -> None:
        self.report()
        assert self.lost == [], f"lost: {self.lost}"
        assert self.unexpected == [], f"unexpected: {self.unexpected}"
        assert self.unauthorized_calls == 0, "provider calls for no request the test sent"
        assert self.max_calls <= max_calls_per_request, dict(self.calls)
        assert self.duplicate_results <= max_duplicate_results


# --------------------------------------------------------------------------- the process


@dataclass
class Process:
    process: asyncio.subprocess.Process
    lines: list[bytes]
    drain: asyncio.Task[None]

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kb(self) -> int:
        """VmRSS of the service process, from /proc."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def outcomes(self) -> Counter[str]:
        """`message.settled` outcomes this process logged (completed, duplicate, retry, ...)."""
        found: Counter[str] = Counter()
        for line in self.lines:
            if b"message.settled" in line:
                with contextlib.suppress(ValueError):
                    found[str(orjson.loads(line).get("outcome"))] += 1
        return found

    def errors(self) -> list[str]:
        """The `error` lines this process logged (a crash's event and its exception's last
        line), so a failing ledger says why without the whole log."""
        found: list[str] = []
        for line in self.lines:
            if b"error" not in line:
                continue
            with contextlib.suppress(ValueError):
                entry = orjson.loads(line)
                if entry.get("level") == "error":
                    exception = str(entry.get("exception", "")).strip().splitlines()
                    found.append(f"{entry.get('event')}: {exception[-1] if exception else ''}")
        return found

    def tail(self, count: int = 30) -> str:
        return b"".join(self.lines[-count:]).decode(errors="replace")

    async def stop(self, *, timeout_s: float = 60) -> int:
        """SIGTERM, then the exit code (a process that does not exit is killed, and the
        test fails on its code)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout_s)
        except TimeoutError:
            self.process.kill()
            # wait() also waits for the stderr pipe to close: bounded, in case anything else
            # still holds it
            code = await asyncio.wait_for(self.process.wait(), 30)
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self.drain, 5)
        return code


# Rate limits stay out of the way of load and fault tests (they are tested on their own);
# short leases and single-flight waits let a survivor take over a dead worker's claims soon.
# The model limits (gpt-5-nano 1000/minute by default) and the per-user share of them (one
# test user sends every request) are off too.
FAULT_ENV = {"RATE_LIMIT_GLOBAL": "off", "RATE_LIMIT_USER": "off", "RATE_LIMIT_TEXT": "off",
             "RATE_LIMIT_MODELS": "{}", "RATE_LIMIT_USER_SHARE": "1",
             "LEASE_S": "5", "SINGLEFLIGHT_WAIT_S": "5", "SHUTDOWN_GRACE_S": "10"}


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
