"""The one place that acks, retries and dead-letters.

One delivery, read top to bottom, in stages that return values:

    on_message        metrics and the log line around the rest; broker trouble hands it back
    _settle           intake (bus/intake.py: token, reply queue, parse, permission) -> Accepted
                      or Refused; a control event is answered here
    _request          retry state, queue index, then the job task:
    _run_job            admission/run.py: claim -> cache / single-flight -> limits -> handler
                        -> finish (the answer cached, the final events recorded) -> Answer,
                        the ledger's Claim, or the error as a value
    decide            bus/outcome.py, pure: the broker outcome from the result, the attempt and
                      the time deferred (tests/bus/test_outcome.py is its table)
    _carry_out        the outcome in order: ledger, job status, events, copy, ack

A delivery is acked only after whatever replaces it (result, retry copy, dead letter) has been
confirmed by the broker. `message.process()` is deliberately not used: cancelling inside it
rejects the message without requeue. Cancellation here (shutdown) hands the delivery back with
a requeue instead, and each request runs under a deadline far below `consumer_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from pydantic import BaseModel

from llm_consumer import metrics, tracing
from llm_consumer.admission.run import run_admitted
from llm_consumer.auth import Principal, TokenVerifier
from llm_consumer.bus.intake import Accepted, Intake, Refused
from llm_consumer.bus.outcome import (
    Batch,
    Busy,
    Completed,
    Defer,
    Duplicate,
    Failed,
    Limits,
    Outcome,
    Result,
    Retry,
    decide,
)
from llm_consumer.bus.publisher import BROKER_DOWN_ERRORS, Publisher, parked_dead_letter
from llm_consumer.bus.queue_index import QueueIndex
from llm_consumer.bus.retry_state import FIRST, RetrySigner, RetryState
from llm_consumer.errors import (
    Forbidden,
    InvalidRequest,
    PermanentFailure,
    RejectedMessage,
    ServiceError,
    TransientFailure,
)
from llm_consumer.events import catalog
from llm_consumer.events.catalog import CONTROL_TYPES
from llm_consumer.events.envelope import Envelope, encode, new_event
from llm_consumer.events.parsing import Parsed, peek
from llm_consumer.events.queue import JobPrioritize, QueueStatus
from llm_consumer.events.requests import (
    CacheInvalidate,
    ContentRequested,
    ImageRequested,
    JobCancel,
)
from llm_consumer.events.results import ErrorInfo, GenerationFailed, JobState, JobStatus
from llm_consumer.handlers.base import CallBudget, Deps, ProgressPolicy, Request
from llm_consumer.handlers.routes import route
from llm_consumer.identity import RequestOwner
from llm_consumer.policy import ModelPolicy, ReplyPolicy
from llm_consumer.slo import NOT_ANSWERED, Delivery, SloBook, SloPolicy, published_at
from llm_consumer.store.guard import Guard
from llm_consumer.store.jobs import Claim, JobLedger

log = structlog.get_logger("llm_consumer.consumer")

ADMIN = "llm:admin"
UNSETTLED_BACKOFF_S = 1.0
LATENCY_WINDOW = 1000


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    source: str
    max_message_bytes: int
    max_attempts: int
    request_deadline_s: float
    shutdown_grace_s: float
    work_queue: str  # retry and replay copies arrive through the default exchange under this key
    max_defer_s: float = 600.0  # total rate-limit wait in delay queues before `rate_limited`
    max_provider_calls: int = 16  # per message, across its attempts
    progress: ProgressPolicy = field(default_factory=ProgressPolicy)  # streamed deltas
    slo: SloPolicy = field(default_factory=SloPolicy)  # latency targets (slo.py)
    instance: str = ""  # this replica's name, in slo.warning


@dataclass(frozen=True, slots=True)
class CallerRules:
    """What callers may name, and how the service's own retry copies are recognised."""

    signer: RetrySigner
    replies: ReplyPolicy
    models: ModelPolicy


# Outcomes the heartbeat's error rate counts as good: answered, answered again, handed to a
# batch, or replaced by a re-prioritized copy (which is answered in its turn).
ANSWERED_OUTCOMES = frozenset({"completed", "duplicate", "batched", "superseded"})


class Stats:
    """Counters for heartbeats and the health check."""

    def __init__(self) -> None:
        self.processed = 0
        self.failed = 0
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def record(self, ok: bool, duration_ms: float) -> None:
        self.processed += 1
        self.failed += 0 if ok else 1
        self.latencies_ms.append(duration_ms)

    @property
    def error_rate(self) -> float:
        return self.failed / self.processed if self.processed else 0.0

    @property
    def p95_ms(self) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


class Consumer:
    def __init__(
        self,
        *,
        config: ConsumerConfig,
        publisher: Publisher,
        ledger: JobLedger,
        verifier: TokenVerifier,
        rules: CallerRules,
        deps: Deps,
        guard: Guard,
        queue_index: QueueIndex | None = None,
    ) -> None:
        self._config = config
        self._guard = guard
        self._intake = Intake(verifier, rules.replies, rules.models, config.work_queue,
                              config.max_message_bytes)
        self._queue_index = queue_index
        self._limits = Limits(config.max_attempts, config.max_defer_s)
        self._rules = rules
        self._publisher = publisher
        self._ledger = ledger
        self._deps = deps
        self._deliveries: set[asyncio.Task[object]] = set()
        self._running: dict[str, asyncio.Task[object]] = {}
        self._subscriptions: list[tuple[AbstractQueue, str]] = []
        self.stats = Stats()
        self.slo = SloBook(config.slo, config.instance)

    @property
    def in_flight(self) -> int:
        return len(self._deliveries)

    @property
    def running(self) -> int:
        """Requests whose handler runs here now (control events and settling not counted)."""
        return len(self._running)

    async def subscribe(self, queue: AbstractQueue, *, exclusive: bool = False) -> None:
        tag = await queue.consume(self.on_message, exclusive=exclusive)
        self._subscriptions.append((queue, tag))

    async def drain(self) -> None:
        """Stop taking work, let in-flight requests finish within the grace, hand back the rest."""
        for queue, tag in self._subscriptions:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        self._subscriptions.clear()
        pending = set(self._deliveries)
        if pending:
            log.info("drain.waiting", in_flight=len(pending), grace_s=self._config.shutdown_grace_s)
            _, pending = await asyncio.wait(pending, timeout=self._config.shutdown_grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
            log.info("drain.handed_back", requests=len(pending))

    # -- one delivery -----------------------------------------------------------------------

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._deliveries.add(task)
        metrics.IN_FLIGHT.inc()
        structlog.contextvars.clear_contextvars()
        started = time.monotonic()
        delivery = Delivery(started=started)
        try:
            outcome = await self._settle(message, delivery)
            elapsed = time.monotonic() - started
            self.stats.record(outcome in ANSWERED_OUTCOMES, elapsed * 1000)
            kind = str(structlog.contextvars.get_contextvars().get("kind") or "none")
            metrics.REQUESTS.labels(kind, outcome).inc()
            metrics.LATENCY.labels(kind).observe(elapsed)
            log.info("message.settled", outcome=outcome, duration_ms=round(elapsed * 1000, 1))
            await self._measure(delivery, outcome, elapsed)
        except asyncio.CancelledError:
            await self._hand_back(message)
            raise
        except Exception as error:
            # The outcome could not be confirmed (broker or channel trouble): leave the delivery
            # to the broker, which redelivers it; never ack what was not replaced.
            if isinstance(error, BROKER_DOWN_ERRORS):  # a lost link: one line, no traceback
                log.warning("message.unsettled", error=f"{type(error).__name__}: {error}")
            else:
                log.exception("message.unsettled")
            await asyncio.sleep(UNSETTLED_BACKOFF_S)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        finally:
            self._deliveries.discard(task)
            metrics.IN_FLIGHT.dec()

    async def _measure(self, delivery: Delivery, outcome: str, elapsed_s: float) -> None:
        """The request's time in parts (histograms, SLO windows) once it is answered; an
        `slo.warning` when one is due. Never raises: the delivery is settled already."""
        self.slo.settled()
        if delivery.kind is None or outcome in NOT_ANSWERED:
            return
        parts = delivery.parts(elapsed_s)
        metrics.QUEUE_WAIT.labels(delivery.kind).observe(parts.queue_wait_s)
        metrics.PROVIDER_TIME.labels(delivery.kind).observe(parts.provider_s)
        metrics.SERVICE_OVERHEAD.labels(delivery.kind).observe(parts.overhead_s)
        for warning in self.slo.observe(delivery.kind, parts):
            log.warning("slo.warning", target=warning.target, share=warning.share,
                        requests=warning.requests)
            try:
                await self._publish(catalog.SLO_WARNING, warning, cause=None, reply_to=None)
            except Exception:
                log.warning("slo.warning_unpublished", exc_info=True)

    async def _hand_back(self, message: AbstractIncomingMessage) -> None:
        with contextlib.suppress(Exception):
            await message.nack(requeue=True)
        log.info("message.handed_back")

    async def _settle(self, message: AbstractIncomingMessage, delivery: Delivery) -> str:
        """parse -> authorize (intake), then a control event or the request path."""
        structlog.contextvars.bind_contextvars(
            delivery_id=message.message_id, routing_key=message.routing_key)
        parked = parked_dead_letter(message.headers)
        if parked is not None:  # refused by a full dead-letter queue earlier: try it again
            code, reason = parked
            await self._publisher.dead_letter(message, code=code, reason=reason)
            await message.ack()
            return "dead_letter"
        taken = self._intake.take_in(message)
        if isinstance(taken, Refused):
            await self._reject(message, taken.error, reply_to=taken.reply_to)
            return taken.error.code
        env = taken.parsed.envelope
        kind = getattr(taken.parsed.data, "kind", None)
        structlog.contextvars.bind_contextvars(
            request_id=env.id, correlation_id=env.correlation, type=env.type, kind=kind)
        parent = tracing.incoming(env.model_extra, message.headers)
        queued_at = message.timestamp or env.time  # the AMQP timestamp, else the event's time
        delivery.published_at = published_at(message.timestamp, env.time)
        with tracing.request_span(f"llm.request {env.type}", parent, queued_at=queued_at,
                                  attributes={"messaging.message.id": env.id,
                                              "llm.kind": str(kind or ""),
                                              "llm.attempt": self._retry_state(message).attempt}):
            if taken.parsed.spec.direction == "control":
                try:
                    await self._control(taken.parsed, taken.principal, taken.reply_to)
                except RejectedMessage as error:
                    await self._reject(message, error, reply_to=taken.reply_to)
                    return error.code
                await message.ack()
                return "control"
            return await self._request(message, taken, delivery)

    async def _reject(self, message: AbstractIncomingMessage, error: RejectedMessage, *,
                      reply_to: str | None) -> None:
        """Dead-letter with the reason; tell the sender when its request id can be read."""
        with tracing.request_span("llm.rejected", tracing.incoming(None, message.headers),
                                  queued_at=None, attributes={"llm.error": error.code}):
            await self._rejected(message, error, reply_to)

    async def _rejected(self, message: AbstractIncomingMessage, error: RejectedMessage,
                        reply_to: str | None) -> None:
        seen = peek(message.body, self._config.max_message_bytes)
        structlog.contextvars.bind_contextvars(request_id=seen.request_id)
        if message.routing_key in CONTROL_TYPES and not await self._ledger.first_to_refuse(
                message.body):  # each replica has a copy of a control event: one answers
            log.info("message.rejected_elsewhere", code=error.code)
            await message.ack()
            return
        log.warning("message.rejected", code=error.code, reason=error.message)
        if seen.request_id:
            failed = GenerationFailed(
                request_id=seen.request_id,
                request_type=seen.request_type or message.routing_key or "unknown",
                kind=seen.kind,
                error=ErrorInfo(code=error.code, message=error.message, retryable=False),
                attempts=self._retry_state(message).attempt + 1,
            )
            # reply_to of a message whose token or permission failed, or that names a queue
            # the caller cannot own, is not trusted (None): only the hub hears it.
            await self._publish(catalog.GENERATION_FAILED, failed, cause=None,
                                reply_to=reply_to, subject_id=seen.request_id)
        await self._publisher.dead_letter(message, code=error.code, reason=error.message)
        await message.ack()

    # -- requests ---------------------------------------------------------------------------

    def _retry_state(self, message: AbstractIncomingMessage) -> RetryState:
        """What earlier attempts left, as the service signed it on its own retry copies."""
        if message.routing_key != self._config.work_queue:
            return FIRST  # from the hub: a caller's message, never one of our copies
        return self._rules.signer.read(message.message_id, message.headers)

    async def _request(self, message: AbstractIncomingMessage, taken: Accepted,
                       delivery: Delivery) -> str:
        """admit -> run -> finish (the job task), then decide and carry out the outcome."""
        env, principal, reply_to = taken.parsed.envelope, taken.principal, taken.reply_to
        data = taken.parsed.data
        assert isinstance(data, ContentRequested | ImageRequested)
        state = self._retry_state(message)
        calls = CallBudget(self._config.max_provider_calls, state.provider_calls)
        delivery.kind, delivery.calls = data.kind.value, calls
        settle = _Settling(message, reply_to, state, calls)
        key = RequestOwner(principal.subject, env.source).key(env.id)
        # Out of the queue index; a copy that job.prioritize replaced is acked unprocessed.
        if self._queue_index is not None and not await self._queue_index.started(
                message, principal, key, state.attempt):
            log.info("request.superseded")
            await message.ack()
            return "superseded"
        if key in self._running:  # a redelivery while the first copy still runs here
            result: Result = Claim("busy")
        else:
            request = Request(envelope=env, data=data, principal=principal,
                              attempt=state.attempt,
                              emit=lambda t, d: self._publish(t, d, cause=env, reply_to=reply_to),
                              calls=calls, progress=self._config.progress, claims_job=True,
                              source=self._config.source, reply_to=reply_to,
                              priority=message.priority)
            result = await self._run_job(request, key)
        outcome = decide(result, attempt=state.attempt, deferred_s=state.deferred_s,
                         limits=self._limits)
        return await self._carry_out(settle, env, data, key, outcome)

    async def _run_job(self, request: Request, key: str) -> Result:
        """Run the request as its own task, so job.cancel and the deadline can stop it alone;
        its errors come back as values."""
        env = request.envelope
        job = asyncio.create_task(run_admitted(route(env.type, request.data), request,
                                               self._deps, self._guard))
        self._running[key] = job
        try:
            async with asyncio.timeout(self._config.request_deadline_s):
                return await job
        except TimeoutError:
            return TransientFailure(
                f"request exceeded its {self._config.request_deadline_s:g}s deadline",
                code="timeout")
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # shutdown: hand it back
                await self._ledger.release(key)
                raise
            return PermanentFailure("cancelled by job.cancel", code="cancelled")
        except ServiceError as error:
            return error
        except BROKER_DOWN_ERRORS:
            # The link to the broker went down under the handler: the delivery is the broker's
            # again (it redelivers it once we are back), so this is not the request's failure.
            await self._ledger.release(key)
            raise
        except Exception as error:
            log.exception("handler.crashed")
            return ServiceError(f"internal error: {type(error).__name__}", code="internal")
        finally:
            self._running.pop(key, None)

    async def _carry_out(self, settle: _Settling, env: Envelope,
                         data: ContentRequested | ImageRequested, key: str,
                         outcome: Outcome) -> str:
        """Do what `outcome` says, always in this order: job ledger, job status, events, the
        copy that replaces the delivery (retry or dead letter), ack. Returns the outcome's name
        for the log line and the metrics."""
        message, reply_to, attempt = settle.message, settle.reply_to, settle.state.attempt
        if isinstance(outcome, Completed):
            answer = outcome.answer  # its events are in the ledger already (admission/run.py)
            await self._status(env, "completed", attempt, reply_to)
            with tracing.stage("llm.publish", events=len(answer.events)):
                for event, body in zip(answer.events, answer.encoded, strict=True):
                    await self._publisher.publish_event(event, reply_to=reply_to, body=body)
            name = "completed"
        elif isinstance(outcome, Batch):
            # The ledger answers a re-send with this status until the batch's answer replaces it.
            status = new_event(catalog.JOB_STATUS,
                               JobStatus(request_id=env.id, state="batched", attempt=attempt),
                               source=self._config.source, cause=env)
            await self._ledger.finish(key, [encode(status)])
            await self._publisher.publish_event(status, reply_to=reply_to)
            name = "batched"
        elif isinstance(outcome, Duplicate):
            for raw in outcome.stored_events:  # as the ledger recorded them: sent as they are
                await self._publisher.publish_event(Envelope.model_validate_json(raw),
                                                    reply_to=reply_to, body=raw)
            name = "duplicate"
        elif isinstance(outcome, Busy):
            await self._publisher.retry_later(message, state=settle.spent(),
                                              delay_s=outcome.delay_s)
            name = "busy"
        elif isinstance(outcome, Retry | Defer):
            await self._ledger.release(key)
            copy = (settle.spent(attempt=outcome.attempt) if isinstance(outcome, Retry)
                    else settle.spent(deferred_s=outcome.deferred_s))
            await self._publisher.retry_later(message, state=copy, delay_s=outcome.delay_s)
            await self._status(env, "deferred", copy.attempt, reply_to)
            name = "retry" if isinstance(outcome, Retry) else "deferred"
        else:
            name = await self._failed(settle, env, data, key, outcome)
        await message.ack()
        return name

    async def _failed(self, settle: _Settling, env: Envelope,
                      data: ContentRequested | ImageRequested, key: str,
                      outcome: Failed) -> str:
        error, attempt = outcome.error, settle.state.attempt
        log.warning("request.failed", code=error.code, reason=error.message, attempt=attempt)
        failed = GenerationFailed(
            request_id=env.id, request_type=env.type, kind=data.kind.value,
            error=ErrorInfo(code=error.code, message=error.message, retryable=error.retryable),
            attempts=attempt + 1,
        )
        failed_event = new_event(catalog.GENERATION_FAILED, failed, source=self._config.source,
                                 cause=env)
        if outcome.remember:  # a re-send gets the same answer without paying again
            await self._ledger.finish(key, [encode(failed_event)])
        else:  # ops may replay it from the dead-letter queue: forget the claim
            await self._ledger.release(key)
        await self._status(env, outcome.state, attempt, settle.reply_to)
        await self._publisher.publish_event(failed_event, reply_to=settle.reply_to)
        if outcome.dead_letter:
            await self._publisher.dead_letter(settle.message, code=error.code,
                                              reason=error.message)
        return error.code

    # -- control ----------------------------------------------------------------------------

    async def _control(self, parsed: Parsed, principal: Principal,
                       reply_to: str | None = None) -> None:
        data = parsed.data
        if isinstance(data, JobCancel):
            owner = cancel_target(data, parsed.envelope.source, principal)
            key = owner.key(data.request_id)
            await self._ledger.mark_cancelled(key)
            job = self._running.get(key)
            if job is not None:
                job.cancel()
            elif self._deps.batch is not None:  # a batched request: failed now, dropped later
                await self._deps.batch.cancel(key)
            log.info("job.cancel", target=data.request_id, running_here=job is not None,
                     by=principal.subject)
        elif isinstance(data, CacheInvalidate):
            kind = data.kind.value if data.kind else None
            removed = await self._guard.invalidate(kind, event_id=parsed.envelope.id)
            log.info("cache.invalidate", target_kind=kind, removed=removed,
                     handled_by_peer=removed is None, by=principal.subject)
        elif isinstance(data, QueueStatus | JobPrioritize):
            if self._queue_index is None:
                raise InvalidRequest(f"{parsed.envelope.type} needs the queue index "
                                     "(QUEUE_INDEX=true)")
            answer = await self._queue_index.answer(parsed.envelope, data, principal)
            if answer is not None:  # else another instance answers
                await self._publish(*answer, cause=parsed.envelope, reply_to=reply_to)
        else:  # pragma: no cover - the catalog lists only these control types
            raise InvalidRequest(f"unhandled control event {parsed.envelope.type}")

    # -- publishing helpers -----------------------------------------------------------------

    async def _publish(self, event_type: str, data: BaseModel, *, cause: Envelope | None,
                       reply_to: str | None, subject_id: str | None = None) -> None:
        event = new_event(event_type, data, source=self._config.source, cause=cause)
        if cause is None and subject_id is not None:
            event = event.model_copy(update={"correlationid": subject_id,
                                             "causationid": subject_id})
        await self._publisher.publish_event(event, reply_to=reply_to)

    async def _status(self, env: Envelope, state: JobState, attempt: int,
                      reply_to: str | None) -> None:
        await self._publish(catalog.JOB_STATUS,
                            JobStatus(request_id=env.id, state=state, attempt=attempt),
                            cause=env, reply_to=reply_to)


@dataclass(frozen=True, slots=True)
class _Settling:
    """One delivery of a request and what its settling needs: where replies go, what earlier
    attempts left, and this attempt's provider calls."""

    message: AbstractIncomingMessage
    reply_to: str | None
    state: RetryState
    calls: CallBudget

    def spent(self, *, attempt: int | None = None, deferred_s: float | None = None,
              ) -> RetryState:
        """The state a copy of this delivery carries on: the calls paid so far included."""
        return RetryState(self.state.attempt if attempt is None else attempt,
                          self.state.deferred_s if deferred_s is None else deferred_s,
                          self.calls.used)


def cancel_target(cancel: JobCancel, source: str, principal: Principal) -> RequestOwner:
    """Whose request a job.cancel names: the sender's own (by default from the same source);
    another caller's only for llm:admin."""
    subject = cancel.subject or principal.subject
    if subject != principal.subject and not principal.allows(ADMIN):
        raise Forbidden("only llm:admin may cancel another caller's request")
    return RequestOwner(subject, cancel.source or source)
