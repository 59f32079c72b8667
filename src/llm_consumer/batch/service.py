"""The batch desk (where opted-in requests leave the realtime path) and the coordinator task
(flush, submit, poll, publish).

A request's life: the pipeline admits it (auth, policy, rate limits, caller scope) and builds
its prompt; `submit` stores the very body a realtime call would send and raises `Batched`; the
consumer acks it with job.status `batched`. The coordinator then, on every replica, every tick:
- flushes open entries into a batch per model when the oldest has waited BATCH_WINDOW_S or
  BATCH_MAX_REQUESTS are open (one replica at a time: a lease);
- submits new batches (JSONL file, purpose `batch`, then the batch), polls submitted ones every
  BATCH_POLL_S, cancels a batch whose requests were all cancelled (a lease per batch);
- on a finished batch, publishes each entry once: the answer read by the realtime path's own
  handler (parsing, validation, the result event), recorded in the job ledger and in usage at
  the batch price; error-file lines, unusable answers and requests a failed, expired or
  cancelled batch never ran become `generation.failed`.
Everything it needs is in Redis (batch/store.py): a restarted service carries on polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import orjson
import structlog
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from llm_consumer import metrics, tracing
from llm_consumer.admission.plan import user_of
from llm_consumer.auth import Principal
from llm_consumer.batch import Batched
from llm_consumer.batch.answers import Failure, ReplayProvider, line_outcome
from llm_consumer.batch.store import Batch, BatchStore, Entry
from llm_consumer.bus.publisher import Publisher
from llm_consumer.errors import ServiceError, TransientFailure
from llm_consumer.events import catalog
from llm_consumer.events.content import CONTENT_MODELS
from llm_consumer.events.envelope import Envelope, encode, new_event
from llm_consumer.events.requests import ContentRequested
from llm_consumer.events.results import (
    ErrorInfo,
    GenerationFailed,
    JobState,
    JobStatus,
    TokenUsage,
)
from llm_consumer.handlers.base import Deps, Reply, Request
from llm_consumer.handlers.routes import route
from llm_consumer.handlers.text_generation import problem_with
from llm_consumer.providers.base import TextCompletion, TextJob
from llm_consumer.providers.openai_batch import BatchState, OpenAIBatchClient
from llm_consumer.store.client import RedisClient
from llm_consumer.store.jobs import JobLedger
from llm_consumer.store.keys import Keys
from llm_consumer.store.usage import PendingUsage, Price, Use, increments, price_for, today

log = structlog.get_logger(__name__)

BATCH_RESULTS = Counter("llm_batch_results", "Batched requests answered: published, failed "
                        "(a generation.failed) or cancelled", ["outcome"],
                        registry=metrics.REGISTRY)
BATCHES = Counter("llm_batches", "Provider batches submitted, and ended by status",
                  ["event"], registry=metrics.REGISTRY)
BATCH_WAITING = Gauge("llm_batch_waiting_requests", "Batched requests waiting for a batch "
                      "(sampled each coordinator tick)", registry=metrics.REGISTRY)

FLUSH_LOCK = "flush"
MAX_BATCH_AGE_S = 26 * 3600  # the 24 h window and two hours: then a batch that cannot be read
# is given up as expired (its requests fail retryable) rather than polled for ever
PUBLISH_AT_ONCE = 32  # entries of a finished batch published together (the lease renewed
# between groups)
LINE_OVERHEAD_BYTES = 120  # custom_id, method and url around a body in the input file


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    window_s: float = 60.0  # BATCH_WINDOW_S
    max_requests: int = 1000  # BATCH_MAX_REQUESTS
    poll_s: float = 60.0  # BATCH_POLL_S
    price_factor: float = 0.5  # BATCH_PRICE_FACTOR
    max_bytes: int = 100_000_000  # BATCH_MAX_BYTES: of one input file (the API takes 200 MB)
    priority_zero: bool = False  # BATCH_PRIORITY_ZERO

    @property
    def tick_s(self) -> float:
        return max(0.05, min(self.window_s, self.poll_s, 5.0) / 2)

    @property
    def lease_s(self) -> float:
        return max(30.0, self.poll_s * 2)


class BodyMaker(Protocol):
    """What the desk needs of the text provider: the realtime call's body (openai_text)."""

    def batch_body(self, job: TextJob) -> dict[str, Any]: ...


class BatchService:
    """The desk (Deps.batch) and the coordinator (`run`)."""

    def __init__(self, *, store: BatchStore, client: OpenAIBatchClient, body: BodyMaker,
                 publisher: Publisher, ledger: JobLedger, redis: RedisClient, keys: Keys,
                 prices: Mapping[str, Price], source: str, instance: str,
                 policy: BatchPolicy) -> None:
        self.store = store
        self._client = client
        self._body = body
        self._publisher = publisher
        self._ledger = ledger
        self._redis = redis
        self._keys = keys
        self._prices = {model: Price(p.prompt * policy.price_factor,
                                     p.completion * policy.price_factor)
                        for model, p in prices.items()}
        self._source = source
        self._instance = instance
        self.policy = policy
        self.deps: Deps | None = None  # the app's, for reading answers (set by the app)

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- the desk ---------------------------------------------------------------------------

    def wants(self, request: Request) -> bool:
        """Asked for (`options.delivery`), else priority 0 under BATCH_PRIORITY_ZERO."""
        data = request.data
        if not isinstance(data, ContentRequested):
            return False
        if data.options is not None and "delivery" in data.options.model_fields_set:
            return data.options.delivery == "batch"
        return self.policy.priority_zero and request.priority == 0

    async def submit(self, request: Request, job: TextJob) -> None:
        body = self._body.batch_body(job)
        entry = Entry(
            id=Entry.new_id(), key=request.key, model=str(body["model"]),
            kind=request.data.kind.value,
            envelope=request.envelope.model_dump_json(exclude_none=True),
            subject=request.principal.subject,
            permissions=orjson.dumps(sorted(request.principal.permissions)).decode(),
            reply_to=request.reply_to or "", user=user_of(request),
            body=orjson.dumps(body).decode(), submitted_at=time.time(),
            attempt=request.attempt, size=len(orjson.dumps(body)) + LINE_OVERHEAD_BYTES)
        try:
            entry_id = await self.store.add(entry)
        except RedisError as error:  # the batch state lives in Redis: try again later
            raise TransientFailure(f"batch delivery is unavailable (Redis: {error})",
                                   code="provider_unavailable") from error
        log.info("batch.entry_added", entry=entry_id, model=entry.model,
                 new=entry_id == entry.id)
        raise Batched(entry_id)

    async def cancel(self, request_key: str) -> bool:
        """job.cancel of a batched request: its `cancelled` failure now, its answer dropped
        when the batch ends. False when the request has no live entry (or Redis is down: the
        ledger's cancel mark still stands)."""
        try:
            return await self._cancel(request_key)
        except RedisError as error:
            log.warning("batch.cancel_failed", error=str(error))
            return False

    async def _cancel(self, request_key: str) -> bool:
        entry_id = await self.store.entry_of(request_key)
        if entry_id is None:
            return False
        previous = await self.store.move(entry_id, "cancelled")
        if previous not in ("open", "taken"):
            return False
        entry = await self.store.entry(entry_id)
        if entry is None:
            return False
        await self._fail(entry, Failure("cancelled", "cancelled by job.cancel while batched",
                                        False), state="cancelled")
        BATCH_RESULTS.labels("cancelled").inc()
        log.info("batch.entry_cancelled", entry=entry_id, was=previous)
        return True

    # -- the coordinator --------------------------------------------------------------------

    async def run(self) -> None:
        """Flush and poll until cancelled; a failing tick is logged and the next one tries."""
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except RedisError as error:  # Redis is down: the state waits there for it
                log.warning("batch.tick_failed", error=str(error))
            except Exception:
                log.exception("batch.tick_failed")
            await asyncio.sleep(self.policy.tick_s)

    async def tick(self) -> None:
        await self.flush()
        for batch_id in await self.store.batch_ids():
            await self._tend(batch_id)

    async def flush(self) -> None:
        policy = self.policy
        count, oldest = await self.store.open_summary()
        BATCH_WAITING.set(count)
        if not count:
            return
        if count < policy.max_requests and time.time() - oldest < policy.window_s:
            return
        if not await self.store.lock(FLUSH_LOCK, self._instance, policy.lease_s):
            return
        try:
            ids = [eid for eid, _ in await self.store.waiting(policy.max_requests)]
            by_model: defaultdict[str, list[str]] = defaultdict(list)
            sizes: defaultdict[str, int] = defaultdict(int)
            for eid, (model, size) in (await self.store.models(ids)).items():
                if by_model[model] and sizes[model] + size > policy.max_bytes:
                    continue  # the file is full: the next flush takes it
                by_model[model].append(eid)
                sizes[model] += size
            for model, entries in by_model.items():
                batch = await self.store.take(model, entries)
                if batch is not None:  # submitted by `_tend`, under the batch's own lease
                    log.info("batch.flushed", batch=batch.id, model=model,
                             requests=len(batch.entries))
        finally:
            await self.store.unlock(FLUSH_LOCK, self._instance)

    async def _tend(self, batch_id: str) -> None:
        """One look at one batch, under its lease."""
        if not await self.store.lock(batch_id, self._instance, self.policy.lease_s):
            return
        try:
            batch = await self.store.batch(batch_id)
            if batch is None:
                return
            due = time.time() - batch.polled_at >= self.policy.poll_s
            if batch.state == "new" and due:
                await self._submit(batch)
            elif batch.state != "new" and due:
                await self._poll(batch)
        finally:
            await self.store.unlock(batch_id, self._instance)

    async def _submit(self, batch: Batch) -> None:
        """Upload the entries' calls and create the batch. A batch whose entries were all
        cancelled meanwhile is dropped; a failed upload is tried again next tick."""
        lines = []
        for entry_id in batch.entries:
            entry = await self.store.entry(entry_id)
            if entry is not None and entry.state not in ("cancelled", "done"):
                await self.store.move(entry_id, "taken")
                lines.append((entry_id, entry.call_body()))
        if not lines:
            await self.store.finish(batch.id)
            return
        try:
            file_id, api_id = await self._client.submit(lines, metadata={"service_batch": batch.id})
        except ServiceError as error:
            log.warning("batch.submit_failed", batch=batch.id, code=error.code,
                        reason=error.message, retried=error.retryable)
            if error.retryable:  # tried again BATCH_POLL_S later
                await self.store.update(batch.id, polled_at=time.time())
                return
            refused = BatchState("", "failed", None, None, (f"{error.code}: {error.message}",))
            await self._finished(batch, refused, download=False)
            return
        await self.store.update(batch.id, state="submitted", api_id=api_id, file_id=file_id,
                                polled_at=time.time(), status="validating")
        BATCHES.labels("submitted").inc()
        log.info("batch.submitted", batch=batch.id, api_batch=api_id, requests=len(lines))

    async def _poll(self, batch: Batch) -> None:
        if batch.state == "submitted" and all(
                state == "cancelled" for state in await self.store.states(batch.entries)):
            with contextlib.suppress(ServiceError):
                await self._client.cancel(batch.api_id)
                await self.store.update(batch.id, state="cancel_requested")
                log.info("batch.cancel_requested", batch=batch.id, api_batch=batch.api_id)
        try:
            state = await self._client.state(batch.api_id)
        except ServiceError as error:
            log.warning("batch.poll_failed", batch=batch.id, code=error.code,
                        reason=error.message)
            await self.store.update(batch.id, polled_at=time.time())
            if time.time() - batch.created_at > MAX_BATCH_AGE_S:  # unreadable past its window
                await self._finished(batch, BatchState(batch.api_id, "expired", None, None, ()),
                                     download=False)
            return
        await self.store.update(batch.id, status=state.status, polled_at=time.time())
        log.info("batch.polled", batch=batch.id, api_batch=batch.api_id, status=state.status)
        if state.done:
            await self._finished(batch, state)

    async def _finished(self, batch: Batch, state: BatchState, *, download: bool = True,
                        ) -> None:
        outputs: dict[str, dict[str, Any]] = {}
        errors: dict[str, dict[str, Any]] = {}
        try:
            if download:
                outputs = await self._client.lines(state.output_file_id)
                errors = await self._client.lines(state.error_file_id)
        except ServiceError as error:  # read again next poll
            log.warning("batch.download_failed", batch=batch.id, reason=error.message)
            return
        published = failed = 0
        entries = batch.entries
        for start in range(0, len(entries), PUBLISH_AT_ONCE):  # each entry on its own, so
            # a group at a time: the broker's confirms and Redis overlap
            await self.store.renew(batch.id, self._instance, self.policy.lease_s)
            group = entries[start:start + PUBLISH_AT_ONCE]
            for ok in await asyncio.gather(*(
                    self._settle(entry_id, outputs.get(entry_id) or errors.get(entry_id), state)
                    for entry_id in group)):
                published += ok is True
                failed += ok is False
                if ok is not None:
                    BATCH_RESULTS.labels("published" if ok else "failed").inc()
        await self.store.finish(batch.id)
        BATCHES.labels(state.status).inc()
        log.info("batch.finished", batch=batch.id, api_batch=batch.api_id, status=state.status,
                 published=published, failed=failed)

    async def _settle(self, entry_id: str, line: dict[str, Any] | None,
                      state: BatchState) -> bool | None:
        """Publish one entry's answer or failure, once. None: nothing to publish (cancelled,
        or done before a restart)."""
        previous = await self.store.move(entry_id, "publishing")
        if previous not in ("open", "taken", "publishing"):
            return None
        entry = await self.store.entry(entry_id)
        if entry is None:
            return None
        envelope = Envelope.model_validate_json(entry.envelope)
        with tracing.request_span("llm.batch.result", tracing.incoming(envelope.model_extra, None),
                                  queued_at=None, attributes={"messaging.message.id": envelope.id,
                                                              "llm.kind": entry.kind}):
            ok = await self._publish(entry, line, state)
        await self.store.move(entry_id, "done")
        return ok

    async def _publish(self, entry: Entry, line: dict[str, Any] | None,
                       state: BatchState) -> bool:
        outcome = line_outcome(line, state, model=entry.model)
        if isinstance(outcome, TextCompletion):
            replies_or_failure = await self._answer(entry, outcome)
        else:
            replies_or_failure = outcome
        if isinstance(replies_or_failure, Failure):
            await self._fail(entry, replies_or_failure, state="failed")
            return False
        await self._publish_result(entry, replies_or_failure)
        return True

    async def _answer(self, entry: Entry, completion: TextCompletion) -> list[Reply] | Failure:
        """The realtime handler's replies for the batch's answer, or why there are none."""
        assert self.deps is not None and self.deps.text is not None
        request = self._request(entry)
        data = request.data
        assert isinstance(data, ContentRequested)
        problem = problem_with(completion, CONTENT_MODELS[data.kind])
        if problem is not None:
            return Failure("internal", f"the batch answer was unusable: {problem} (batch "
                           "answers are not repaired; send the request again)", False)
        deps = replace(self.deps, text=ReplayProvider(completion, self.deps.text),
                       metered_text=None, batch=None)
        try:
            return await route(request.envelope.type, data)(request, deps)
        except ServiceError as error:
            return Failure(error.code, error.message, error.retryable)

    def _request(self, entry: Entry) -> Request:
        envelope = Envelope.model_validate_json(entry.envelope)
        data = ContentRequested.model_validate(envelope.data).model_copy(
            update={"stream": False})
        principal = Principal(entry.subject, frozenset(orjson.loads(entry.permissions)))
        reply_to = entry.reply_to or None

        async def emit(event_type: str, event: Any) -> None:
            await self._publisher.publish_event(
                new_event(event_type, event, source=self._source, cause=envelope),
                reply_to=reply_to)

        waited = max(0.0, time.time() - entry.submitted_at)
        return Request(envelope=envelope, data=data, principal=principal, attempt=entry.attempt,
                       emit=emit, started=time.monotonic() - waited, reply_to=reply_to)

    async def _publish_result(self, entry: Entry, replies: list[Reply]) -> None:
        envelope = Envelope.model_validate_json(entry.envelope)
        events = [new_event(r.type, r.data, source=self._source, cause=envelope)
                  for r in replies]
        await self._ledger.finish(entry.key, [encode(e) for e in events])
        await self._count(entry, replies)
        await self._status(envelope, entry, "completed")
        for event in events:
            await self._publisher.publish_event(event, reply_to=entry.reply_to or None)

    async def _fail(self, entry: Entry, failure: Failure, *, state: JobState) -> None:
        envelope = Envelope.model_validate_json(entry.envelope)
        event = new_event(catalog.GENERATION_FAILED, GenerationFailed(
            request_id=envelope.id, request_type=envelope.type, kind=entry.kind,
            error=ErrorInfo.model_validate({"code": failure.code, "message": failure.message,
                                            "retryable": failure.retryable}),
            attempts=entry.attempt + 1), source=self._source, cause=envelope)
        if failure.retryable:  # a re-send runs again (a new entry) instead of getting this
            await self._redis.delete(self._keys.job(entry.key))
            await self.store.forget(entry.key)
        else:
            await self._ledger.finish(entry.key, [encode(event)])
        log.warning("batch.request_failed", entry=entry.id, code=failure.code,
                    reason=failure.message)
        await self._status(envelope, entry, state)
        await self._publisher.publish_event(event, reply_to=entry.reply_to or None)

    async def _status(self, envelope: Envelope, entry: Entry, state: JobState) -> None:
        await self._publisher.publish_event(
            new_event(catalog.JOB_STATUS, JobStatus(request_id=envelope.id, state=state,
                                                    attempt=entry.attempt),
                      source=self._source, cause=envelope),
            reply_to=entry.reply_to or None)

    async def _count(self, entry: Entry, replies: list[Reply]) -> None:
        """Usage and cost at the batch price (BATCH_PRICE_FACTOR of the price table)."""
        first = replies[0].data if replies else None
        usage = getattr(first, "token_usage", None)
        model = str(getattr(first, "model_used", None) or entry.model)
        assert usage is None or isinstance(usage, TokenUsage)
        use = Use(model, entry.kind, entry.user, usage.prompt_tokens if usage else 0,
                  usage.completion_tokens if usage else 0)
        metrics.count_use(use, price_for(self._prices, model))
        pending = PendingUsage()
        pending.add(today(), increments(use, self._prices))
        try:
            await pending.flush(self._redis, self._keys)
        except Exception:  # usage must never block an answer
            log.warning("batch.usage_failed", exc_info=True)
