"""Queue status and re-prioritizing over a broker that can do neither.

RabbitMQ tells a queue's depth, not its depth per priority nor a message's position, and cannot
reorder a queue. So the broker fans a copy of every request into a second queue (topology's
`index`), and any replica reads those copies into an index in Redis (store/queue_index.py):
who sent it, its priority, when, and its body. A request leaves the index when a worker starts
it (`started`, one script on the worker's path).

`job.prioritize` publishes a copy of the stored body at the new priority straight to the work
queue, carrying a copy id signed like the retry state (bus/retry_state.py), and records that
id as the request's live copy: when the old copy is delivered it is acked unprocessed, so the
request runs once and its caller gets one result. A caller only ever sees and moves its own
requests (token `sub` and `source`); `llm:admin` sees all and may move anyone's.

Control events reach every instance (bus/topology.py); one answers each (`once`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, FieldValue
from aiormq.exceptions import PublishError

from llm_consumer.auth import Principal, TokenVerifier, require
from llm_consumer.bus.depth import queue_depth
from llm_consumer.bus.topology import Topology
from llm_consumer.errors import Forbidden, RejectedMessage
from llm_consumer.events import catalog
from llm_consumer.events.envelope import CLOUDEVENTS_CONTENT_TYPE, Envelope
from llm_consumer.events.parsing import parse
from llm_consumer.events.queue import (
    BandDepth,
    BrokerDepths,
    JobPrioritize,
    JobPrioritized,
    QueueStatus,
    QueueStatusReported,
    RequestPosition,
    RequestState,
)
from llm_consumer.events.requests import ContentRequested, ImageRequested
from llm_consumer.identity import RequestOwner
from llm_consumer.policy import ModelPolicy, ReplyPolicy
from llm_consumer.store.queue_index import (
    BANDS,
    Entry,
    Located,
    QueueIndexStore,
    owner_digest,
)

log = structlog.get_logger(__name__)

ADMIN = "llm:admin"
COPY_HEADER = "x-llm-copy"
COPY_SIGNATURE_HEADER = "x-llm-copy-signature"
MAX_COPY_ID = 64
INDEX_PREFETCH = 200
INDEX_BATCH = 100  # index copies written in one script call at most


class _Batches:
    """Index entries written together: each script call takes every entry that arrived while
    the previous one was out, so a copy alone is written at once and a burst in a few calls
    (at the platform's rate, one call for many copies instead of one each)."""

    def __init__(self, write: Callable[[list[Entry]], Awaitable[object]], most: int) -> None:
        self._write = write
        self._most = most
        self._waiting: list[tuple[Entry, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def add(self, entry: Entry) -> None:
        """Back once `entry` was written, or its write failed (the index is best effort)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all())
        await done

    async def _write_all(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:self._most], self._waiting[self._most:]
                try:
                    await self._write([entry for entry, _ in batch])
                except Exception:
                    log.exception("queue_index.add_failed", entries=len(batch))
                finally:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._writer = None


class CopySigner:
    """Signs the copy id a re-prioritized copy carries (a caller cannot name one)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def headers(self, message_id: str, copy_id: str) -> dict[str, FieldValue]:
        return {COPY_HEADER: copy_id, COPY_SIGNATURE_HEADER: self._sign(message_id, copy_id)}

    def read(self, message_id: str | None, headers: Mapping[str, object] | None) -> str:
        """The copy id the service signed on this message; '' for anything else."""
        found = headers or {}
        copy_id, signature = found.get(COPY_HEADER), found.get(COPY_SIGNATURE_HEADER)
        if isinstance(copy_id, bytes):
            copy_id = copy_id.decode(errors="replace")
        if isinstance(signature, bytes):
            signature = signature.decode(errors="replace")
        if not (isinstance(copy_id, str) and 0 < len(copy_id) <= MAX_COPY_ID
                and isinstance(signature, str)):
            return ""
        if not hmac.compare_digest(signature, self._sign(message_id or "", copy_id)):
            return ""
        return copy_id

    def _sign(self, message_id: str, copy_id: str) -> str:
        return hmac.new(self._key, f"{message_id}|{copy_id}".encode(),
                        hashlib.sha256).hexdigest()


def target_owner(data: QueueStatus | JobPrioritize, source: str,
                 principal: Principal) -> RequestOwner:
    """Whose request a control event names: the sender's own (by default from the same
    source); another caller's only for llm:admin (as job.cancel)."""
    subject = data.subject or principal.subject
    if subject != principal.subject and not principal.allows(ADMIN):
        raise Forbidden("only llm:admin may name another caller's request")
    return RequestOwner(subject, data.source or source)


def _authorization(headers: Mapping[str, object]) -> str:
    for name, value in headers.items():
        if name.lower() == "authorization":
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return ""


class QueueIndex:
    """The service's side of the queue index: it reads the index copies, takes starting
    requests out, and answers queue.status and job.prioritize."""

    def __init__(self, store: QueueIndexStore, topology: Topology, *, verifier: TokenVerifier,
                 signer: CopySigner, instance: str, max_message_bytes: int,
                 max_body_bytes: int, live_within_s: float,
                 policies: tuple[ReplyPolicy, ModelPolicy] | None = None) -> None:
        self.store = store
        self._policies = policies
        self._topology = topology
        self._verifier = verifier
        self._signer = signer
        self._instance = instance
        self._max_message_bytes = max_message_bytes
        self._max_body_bytes = max_body_bytes
        self._live_within_s = live_within_s
        self._publishing: AbstractChannel | None = None
        self._probing: AbstractChannel | None = None
        self._added = _Batches(lambda entries: store.call(
            "queue_index.add", lambda: store.add_many(entries)), INDEX_BATCH)

    def attach(self, *, publishing: AbstractChannel, probing: AbstractChannel) -> None:
        """The channels it publishes copies on (confirms) and reads queue depths on."""
        self._publishing = publishing
        self._probing = probing

    # -- index copies -------------------------------------------------------------------------

    async def on_index_copy(self, message: AbstractIncomingMessage) -> None:
        """Record one copy; always acked (a copy that cannot be read is not indexed)."""
        try:
            entry = self._entry(message)
            if entry is not None:
                await self._added.add(entry)
        finally:
            with contextlib.suppress(Exception):
                await message.ack()

    def _entry(self, message: AbstractIncomingMessage) -> Entry | None:
        queued_us = time.time_ns() // 1000  # read in delivery order, before any await
        headers = message.headers or {}
        try:  # what the worker will check first: a copy it would refuse is not counted
            principal = self._verifier.verify_header(headers)
            parsed = parse(message.body, message.routing_key or "",
                           max_bytes=self._max_message_bytes)
            assert parsed.spec.permission is not None
            require(principal, parsed.spec.permission)
            if self._policies is not None:
                replies, models = self._policies
                replies.check(message.reply_to)
                if isinstance(parsed.data, ContentRequested | ImageRequested):
                    models.check(parsed.data)
        except RejectedMessage:
            return None
        env = parsed.envelope
        body = message.body if len(message.body) <= self._max_body_bytes else None
        return Entry(key=RequestOwner(principal.subject, env.source).key(env.id),
                     owner=owner_digest(principal.subject), request_id=env.id,
                     priority=message.priority or 0, queued_us=queued_us, body=body,
                     authorization=_authorization(headers), reply_to=message.reply_to or "")

    # -- the worker's path ----------------------------------------------------------------------

    async def started(self, message: AbstractIncomingMessage, principal: Principal, key: str,
                      attempt: int) -> bool:
        """False when this delivery is a superseded copy (acked without a result)."""
        copy_id = self._signer.read(message.message_id, message.headers)
        return await self.store.started(key, owner_digest(principal.subject), message.priority,
                                        copy_id, attempt)

    async def report_in_flight(self, in_flight: Callable[[], int], every_s: float) -> None:
        """Tell Redis how many requests run here, until cancelled."""
        try:
            while True:
                await self.store.call("queue_index.in_flight", lambda: self.store.report_in_flight(
                    self._instance, in_flight()))
                await asyncio.sleep(every_s)
        finally:
            with contextlib.suppress(Exception):
                await self.store.retire(self._instance)

    # -- control ----------------------------------------------------------------------------

    async def answer(self, env: Envelope, data: QueueStatus | JobPrioritize,
                     principal: Principal,
                     ) -> tuple[str, QueueStatusReported | JobPrioritized] | None:
        """The answer event to publish, or None when another instance answers it."""
        first = await self.store.call("queue_index.once", lambda: self.store.once(
            RequestOwner(principal.subject, env.source).key(env.id)))
        if first is False:
            return None
        if isinstance(data, JobPrioritize):
            return catalog.JOB_PRIORITIZED, await self._prioritize(env, data, principal)
        return catalog.QUEUE_STATUS_REPORTED, await self._status(env, data, principal)

    async def _status(self, env: Envelope, data: QueueStatus,
                      principal: Principal) -> QueueStatusReported:
        admin = principal.allows(ADMIN)
        target = (target_owner(data, env.source, principal) if data.request_id
                  else None)
        key = target.key(data.request_id) if target and data.request_id else None
        depths = await self.store.call("queue.status", lambda: self.store.depths(
            None if admin else owner_digest(principal.subject), key))
        running = await self.store.call(
            "queue.status", lambda: self.store.in_flight(self._live_within_s)) or {}
        request = None
        if data.request_id and key is not None:
            request = await self._locate(data.request_id, key,
                                         depths.target if depths else None)
        bands = depths.bands if depths else (0,) * BANDS
        return QueueStatusReported(
            scope="all" if admin else "own", queued=sum(bands),
            bands=[BandDepth(priority=p, queued=bands[p]) for p in reversed(range(BANDS))
                   if bands[p]],
            in_flight=sum(running.values()),
            in_flight_by_instance=running if admin else {},
            broker=await self._broker_depths(), request=request,
            index="ok" if depths is not None else "degraded")

    async def _locate(self, request_id: str, key: str, found: Located | None) -> RequestPosition:
        if found is not None and found.priority is not None:
            queued_s = (max(0.0, time.time() - found.queued_us / 1e6)
                        if found.queued_us is not None else None)
            return RequestPosition(
                request_id=request_id, state="queued", priority=found.priority,
                attempt=found.attempt or 0, position=found.position,
                ahead_in_band=found.ahead_in_band, ahead_in_higher=found.ahead_in_higher,
                queued_s=queued_s)
        job = await self.store.call("queue.status", lambda: self.store.job_state(key))
        state: RequestState = "unknown"
        if job is not None:
            recorded, cancelled, events = job
            if recorded == "done":
                state = "failed" if _ends_failed(events) else "completed"
            elif recorded == "running":
                state = "running"
            elif cancelled:
                state = "cancelled"
            elif found is not None and found.attempt is not None:
                state = "deferred"  # started, released for a retry or a rate-limit wait
        return RequestPosition(request_id=request_id, state=state,
                               attempt=found.attempt if found is not None else None)

    async def _broker_depths(self) -> BrokerDepths:
        channel = self._probing
        assert channel is not None
        topo = self._topology

        async def depth(name: str) -> int:
            return await queue_depth(channel, name)

        delays = {step: await depth(spec.name) for step, spec in topo.delays}
        waiting = {str(step): count for step, count in delays.items() if count}
        return BrokerDepths(
            work_queue=await depth(topo.work.name), deferred=sum(delays.values()),
            deferred_by_delay_s=waiting,
            oldest_deferred_max_s=max((s for s, c in delays.items() if c), default=None),
            dead_letters=await depth(topo.dead.name))

    async def _prioritize(self, env: Envelope, data: JobPrioritize,
                          principal: Principal) -> JobPrioritized:
        owner = target_owner(data, env.source, principal)
        key = owner.key(data.request_id)
        moved = await self.store.call("job.prioritize", lambda: self.store.prioritize(
            key, owner_digest(owner.subject), data.priority))
        if moved is None:
            raise RejectedMessage("the queue index is unavailable (Redis did not answer)",
                                  code="internal")

        def answer(outcome: Any, position: int | None = None) -> JobPrioritized:
            return JobPrioritized(request_id=data.request_id, outcome=outcome,
                                  priority=data.priority, previous_priority=moved.previous,
                                  position=position)

        if moved.outcome == "not_found":
            located = await self._locate(data.request_id, key, None)
            if located.state in ("running", "deferred"):
                return answer("running")
            if located.state in ("completed", "failed", "cancelled"):
                return answer("completed")
            return answer("not_found")
        if moved.outcome != "accepted":
            return answer(moved.outcome)
        try:
            await self._publish_copy(data.request_id, data.priority, moved.copy_id, moved.body,
                                     moved.authorization, moved.reply_to)
        except BaseException:
            await self.store.call("job.prioritize", lambda: self.store.undo(key, moved.copy_id))
            raise
        log.info("job.prioritized", target=data.request_id, priority=data.priority,
                 previous=moved.previous, by=principal.subject)
        depths = await self.store.call("job.prioritize", lambda: self.store.depths(
            owner_digest(owner.subject), key))
        return answer("accepted", depths.target.position if depths else None)

    async def _publish_copy(self, request_id: str, priority: int, copy_id: str, body: bytes,
                            authorization: str, reply_to: str) -> None:
        channel = self._publishing
        assert channel is not None
        headers: dict[str, FieldValue] = {"authorization": authorization,
                                          **self._signer.headers(request_id, copy_id)}
        kind = orjson.loads(body).get("type") if body else None
        message = aio_pika.Message(
            body=body, headers=headers, content_type=CLOUDEVENTS_CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, priority=priority,
            message_id=request_id, correlation_id=request_id, reply_to=reply_to or None,
            timestamp=datetime.now(UTC), type=str(kind) if kind else None)
        await channel.default_exchange.publish(message, routing_key=self._topology.work.name,
                                               mandatory=True)


def _ends_failed(events: bytes | None) -> bool:
    """Whether a done record's final events are a generation.failed."""
    if not events:
        return False
    with contextlib.suppress(orjson.JSONDecodeError):
        found = orjson.loads(events)
        return bool(found) and isinstance(found, list) and isinstance(found[-1], dict) and (
            found[-1].get("type") == catalog.GENERATION_FAILED)
    return False


# -- a peer's side --------------------------------------------------------------------------

ANSWERS = {catalog.QUEUE_STATUS: catalog.QUEUE_STATUS_REPORTED,
           catalog.JOB_PRIORITIZE: catalog.JOB_PRIORITIZED}


class NoService(Exception):
    """Nothing on the hub takes the control event: the service's queues are not there."""


async def ask(nodes: Sequence[str], hub_exchange: str, event_type: str, data: dict[str, Any], *,
              token: str, timeout_s: float, source: str = "/llm-consumer-cli",
              ) -> dict[str, Any]:
    """Publish a queue.status or job.prioritize and return its answer event, or the
    generation.failed that refused it. TimeoutError when none comes in time."""
    from llm_consumer.client import open_hub

    event_id = str(uuid.uuid4())
    envelope: dict[str, Any] = {"specversion": "1.0", "id": event_id, "source": source,
                "type": event_type, "time": datetime.now(UTC).isoformat(),
                "datacontenttype": "application/json", "data": data}
    wanted = {ANSWERS[event_type], catalog.GENERATION_FAILED}
    found: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    async with open_hub(nodes) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)

        async def on_reply(message: AbstractIncomingMessage) -> None:
            async with message.process():
                with contextlib.suppress(orjson.JSONDecodeError):
                    event = orjson.loads(message.body)
                    if (isinstance(event, dict) and event.get("type") in wanted
                            and _answers(event, event_id) and not found.done()):
                        found.set_result(event)

        await replies.consume(on_reply)
        hub = await channel.get_exchange(hub_exchange, ensure=False)
        message = aio_pika.Message(
            body=orjson.dumps(envelope), headers={"authorization": f"Bearer {token}"},
            content_type=CLOUDEVENTS_CONTENT_TYPE, message_id=event_id,
            type=event_type, reply_to=replies.name)
        try:
            await hub.publish(message, routing_key=event_type, mandatory=True)
        except PublishError as error:
            raise NoService(f"no queue on exchange {hub_exchange!r} takes {event_type!r}: "
                            "start the service first (llm-consumer run)") from error
        return await asyncio.wait_for(found, timeout_s)


def _answers(event: dict[str, Any], request_id: str) -> bool:
    data = event.get("data")
    if event.get("type") == catalog.GENERATION_FAILED:
        return isinstance(data, dict) and data.get("request_id") == request_id
    return event.get("correlationid") == request_id
