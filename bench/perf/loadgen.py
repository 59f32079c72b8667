"""The load generator: requests published to a hub as a peer would, results counted on a
queue bound to it, matched by correlation id.

Two shapes: a closed loop that keeps `in_flight` requests outstanding (each result sends the
next; throughput is read in a window after a warm-up) and an open loop that publishes at a
fixed rate (latency is read per request). Requests are published without confirms and results
consumed without acks, so the generator spends as little CPU as it can.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from llm_consumer.client import build_request
from llm_consumer.events import catalog
from llm_consumer.events.envelope import CLOUDEVENTS_CONTENT_TYPE
from perf.procs import cpu_seconds

KIND = "character.backstory"
RESULT_KEYS = (catalog.CONTENT_GENERATED, catalog.GENERATION_FAILED)
COUNTED_KEYS = (catalog.CONTENT_PROGRESS,)  # counted per run, not results
Contexts = Callable[[str], dict[str, Any]]
Envelope = Callable[[str], dict[str, Any]]  # request id -> the request's CloudEvent


def fresh_context(request_id: str) -> dict[str, Any]:
    """A context no earlier request had (a cache miss); its name marks the provider call."""
    return {"name": f"Hero {request_id}", "race": "Half-Elf", "class": "Rogue", "level": 3}


def streamed_chat(request_id: str) -> dict[str, Any]:
    """A streamed free-text chat.completion; its marker names the provider call."""
    return build_request("chat.completion", {
        "messages": [{"role": "user", "content": f"Tell the tale of Hero {request_id}."}],
        "stream": True}, request_id=request_id, source="/bench")


def pooled_context(pool: list[str]) -> Contexts:
    """Contexts drawn in turn from `pool` (ids of requests already answered: cache hits)."""
    turn = itertools.count()
    return lambda _request_id: fresh_context(pool[next(turn) % len(pool)])


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go (a hub exchange) and whose CPU pays for them."""

    name: str
    exchange: str
    pid: int
    children: tuple[int, ...] = ()  # worker processes under a supervisor `pid`

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in (self.pid, *self.children))


@dataclass(slots=True)
class Window:
    """What one run measured; counts and CPU are those of the measuring window."""

    target: str
    completed: int
    seconds: float
    cpu_s: float
    loadgen_cpu_s: float
    failed: int = 0
    lost: int = 0
    latencies: list[tuple[str, float]] = field(default_factory=list)  # (request id, seconds)
    per_second: list[int] = field(default_factory=list)  # answers in each second of the run
    arrivals: list[float] = field(default_factory=list)  # open loop: seconds after the start
    progress: int = 0  # content.progress events seen

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.completed * 1e6 if self.completed else 0.0

    @property
    def target_cpu_share(self) -> float:
        return self.cpu_s / self.seconds if self.seconds else 0.0

    @property
    def loadgen_cpu_share(self) -> float:
        return self.loadgen_cpu_s / self.seconds if self.seconds else 0.0


@dataclass(slots=True)
class _Run:
    target: Target
    exchange: AbstractExchange
    contexts: Contexts
    envelope: Envelope | None = None  # None: KIND with `contexts`
    refill: bool = False  # closed loop: every answer sends the next request
    completed: int = 0
    failed: int = 0
    record: bool = False
    outstanding: dict[str, float] = field(default_factory=dict)
    latencies: list[tuple[str, float]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    progress: int = 0
    emptied: asyncio.Event = field(default_factory=asyncio.Event)


class LoadGen:
    def __init__(self, url: str, token: str) -> None:
        self._url = url
        self._headers = {"authorization": f"Bearer {token}"}
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._publishing: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._run: _Run | None = None
        self._consuming: tuple[aio_pika.abc.AbstractQueue, str] | None = None
        self.reconnects = 0  # the broker closed our connection (someone's fault injection)
        self.results_queue = f"bench-results-{uuid.uuid4().hex[:8]}"

    async def open(self, exchanges: list[str]) -> None:
        connection = await aio_pika.connect_robust(self._url)
        connection.reconnect_callbacks.add(self._reconnected)
        self._connection = connection
        self._publishing = await self._connection.channel(publisher_confirms=False)
        consuming = await self._connection.channel()
        queue = await consuming.declare_queue(self.results_queue, exclusive=True)
        for name in exchanges:
            exchange = await self._publishing.declare_exchange(
                name, aio_pika.ExchangeType.TOPIC, durable=True)
            self._exchanges[name] = exchange
            for key in (*RESULT_KEYS, *COUNTED_KEYS):
                await queue.bind(name, routing_key=key)
        self._consuming = queue, await queue.consume(self._on_result, no_ack=True)

    def _reconnected(self, *_: object) -> None:
        self.reconnects += 1

    async def close(self) -> None:
        if self._connection is not None:
            if self._consuming is not None:
                queue, tag = self._consuming
                await queue.cancel(tag)
            channel = await self._connection.channel()
            await channel.queue_delete(self.results_queue)
            await self._connection.close()

    # -- the two shapes ------------------------------------------------------------------------

    async def closed_loop(self, target: Target, *, in_flight: int, warmup_s: float,
                          measure_s: float, contexts: Contexts = fresh_context,
                          max_warmup_s: float = 30.0, turns: float = 0.0,
                          envelope: Envelope | None = None) -> Window:
        """Keep `in_flight` requests outstanding; measure once `warmup_s` has passed and the
        first `in_flight` answers are in (the loop has turned once), or `max_warmup_s` has.
        The window lasts `measure_s`, or `turns` times one turn when that is longer (a
        saturated service answers in waves of a turn's length), at most `max_warmup_s`."""
        run = self._start(target, contexts)
        run.envelope = envelope
        run.refill = True
        started = time.perf_counter()
        trace: list[int] = []
        tracing = asyncio.create_task(_trace(run, trace))
        await asyncio.gather(*(self._send(run) for _ in range(in_flight)))
        await asyncio.sleep(warmup_s)
        while run.completed < in_flight and time.perf_counter() - started < max_warmup_s:
            await asyncio.sleep(0.1)
        turn_s = time.perf_counter() - started
        window = await self._measure(run, min(max(measure_s, turns * turn_s), max_warmup_s))
        tracing.cancel()
        window.per_second = trace
        window.lost = await self._drain(run)
        return window

    async def open_loop(self, target: Target, *, rate: float, seconds: float,
                        contexts: Contexts = fresh_context) -> Window:
        """Publish `rate` requests a second for `seconds`; every latency is kept."""
        run = self._start(target, contexts)
        run.record = True
        started, cpu0, own0 = time.perf_counter(), target.cpu_seconds(), time.process_time()
        for sent in range(int(rate * seconds)):
            pause = started + sent / rate - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            await self._send(run)
        lost = await self._drain(run)
        elapsed = time.perf_counter() - started
        return Window(target.name, run.completed, elapsed, target.cpu_seconds() - cpu0,
                      time.process_time() - own0, run.failed, lost, run.latencies,
                      arrivals=[at - started for at in run.arrivals], progress=run.progress)

    async def once(self, target: Target, request_ids: list[str], *,
                   contexts: Contexts = fresh_context) -> Window:
        """Send these requests (all at once) and wait for every answer."""
        run = self._start(target, contexts)
        await asyncio.gather(*(self._send(run, request_id) for request_id in request_ids))
        lost = await self._drain(run)
        return Window(target.name, run.completed, 0.0, 0.0, 0.0, run.failed, lost)

    # -- internals -----------------------------------------------------------------------------

    def _start(self, target: Target, contexts: Contexts) -> _Run:
        self._run = _Run(target, self._exchanges[target.exchange], contexts)
        return self._run

    async def _measure(self, run: _Run, seconds: float) -> Window:
        count0, failed0, progress0 = run.completed, run.failed, run.progress
        cpu0, own0, started = run.target.cpu_seconds(), time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - started
        return Window(run.target.name, run.completed - count0, elapsed,
                      run.target.cpu_seconds() - cpu0, time.process_time() - own0,
                      run.failed - failed0, progress=run.progress - progress0)

    async def _drain(self, run: _Run, timeout_s: float = 60) -> int:
        """Stop sending; wait for what is outstanding. Returns how many never came back."""
        run.refill = False
        if run.outstanding:
            run.emptied.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await run.emptied.wait()
            except TimeoutError:
                pass
        lost = len(run.outstanding)
        self._run = None
        return lost

    async def _send(self, run: _Run, request_id: str | None = None) -> None:
        request_id = request_id or str(uuid.uuid4())
        envelope = (run.envelope(request_id) if run.envelope is not None else
                    build_request(KIND, {"context": run.contexts(request_id)},
                                  request_id=request_id, source="/bench"))
        message = aio_pika.Message(
            body=orjson.dumps(envelope), headers=self._headers,  # type: ignore[arg-type]
            content_type=CLOUDEVENTS_CONTENT_TYPE, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=request_id, correlation_id=request_id, type=envelope["type"])
        run.outstanding[request_id] = time.perf_counter()
        await run.exchange.publish(message, routing_key=envelope["type"])

    async def _on_result(self, message: AbstractIncomingMessage) -> None:
        arrived = time.perf_counter()
        run = self._run
        if run is None or message.correlation_id is None:
            return
        if message.type in COUNTED_KEYS:
            run.progress += message.correlation_id in run.outstanding
            return
        sent = run.outstanding.pop(message.correlation_id, None)
        if sent is None:  # a late answer of an earlier run
            return
        run.completed += 1
        run.failed += message.type == catalog.GENERATION_FAILED
        if run.record:
            run.latencies.append((message.correlation_id, arrived - sent))
            run.arrivals.append(arrived)
        if run.refill:
            await self._send(run)
        elif not run.outstanding:
            run.emptied.set()


async def _trace(run: _Run, into: list[int]) -> None:
    """Answers per second, for as long as the run is measured."""
    seen = 0
    while True:
        await asyncio.sleep(1.0)
        into.append(run.completed - seen)
        seen = run.completed
