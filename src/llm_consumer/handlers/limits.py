"""Rate-limit waits and notices, and the metering of provider calls after a request's first.

`admit_within` asks the admission until it gets an answer other than "limited": a short wait
(the next slot within RATE_LIMIT_INLINE_WAIT_S, counting earlier waits of this delivery) happens
in place; a longer one raises `Deferred`, which the consumer turns into a delay-queue trip that
holds no consumer slot. `rate_limit.warning` / `rate_limit.exceeded` notices come back from the
same script call already throttled (one per second per scope and key, across replicas).

The pipeline's admission covers a request's first provider call (a ticket in a context
variable); when that call leaves, its log entries are moved to that moment (`restamp`, run
alongside the call), so windows count calls as the provider receives them. `MeteredText` wraps
the text provider so that any further call in the same request (the repair of an unusable
answer, another model) is admitted against that model's limits right before it goes out. It
walks the fallback chain itself (the provider it wraps is built without one): a fallback
model's call is admitted as that model, against its own limits, not the first model's.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from llm_consumer import metrics, tracing
from llm_consumer.errors import Deferred, ServiceError
from llm_consumer.events import catalog
from llm_consumer.events.results import RateLimitNotice
from llm_consumer.handlers.base import CallBudget, Emit
from llm_consumer.handlers.progress import ProgressSink
from llm_consumer.prompts.tokens import MESSAGE_OVERHEAD_TOKENS, estimate
from llm_consumer.providers.base import StreamSink, TextCompletion, TextJob, TextProvider
from llm_consumer.providers.fallback_policy import MAX_INLINE_WAITS, next_step
from llm_consumer.store.admission import Admitted, Ask, Follow, Hit, Known, Limited
from llm_consumer.store.guard import Guard
from llm_consumer.store.ratelimit import Notice, model_scopes

log = structlog.get_logger(__name__)

DEFAULT_ANSWER_TOKENS = 1000


@dataclass(slots=True)
class Ticket:
    """The first provider call of a request, admitted with the request itself."""

    model: str
    kind: str
    emit: Emit
    calls: CallBudget = field(default_factory=CallBudget)  # the request's cap on provider calls
    waited_s: float = 0.0
    ask: Ask | None = None
    admitted: Admitted | None = None
    used: bool = False


TICKET: ContextVar[Ticket | None] = ContextVar("llm_consumer_ticket", default=None)


async def emit_notices(emit: Emit, notices: tuple[Notice, ...]) -> None:
    for notice in notices:
        event = (catalog.RATE_LIMIT_WARNING if notice.event == "warning"
                 else catalog.RATE_LIMIT_EXCEEDED)
        window = notice.scope.window_s if notice.scope.measure != "budget" else max(
            0.001, notice.retry_after_s)
        await emit(event, RateLimitNotice(
            scope=notice.scope.scope, key=notice.scope.key, limit=notice.limit, window_s=window,
            remaining=notice.remaining, retry_after_s=round(notice.retry_after_s, 3)))


async def admit_within(guard: Guard, ask: Ask, emit: Emit,
                       ticket: Ticket) -> Known | Hit | Follow | Admitted:
    """Any verdict but Limited: a rate-limit wait happens in place while it is short, else
    this raises Deferred."""
    while True:
        verdict = await guard.admission.admit(ask)
        if isinstance(verdict, Admitted | Limited):
            await emit_notices(emit, verdict.notices)
        if not isinstance(verdict, Limited):
            metrics.RATE_LIMIT.labels("admitted" if isinstance(verdict, Admitted) else
                                      "answered").inc()
            return verdict
        wait = verdict.retry_after_s
        if ticket.waited_s + wait > guard.policy.inline_wait_s:
            metrics.RATE_LIMIT.labels("deferred").inc()
            scope = verdict.scope
            raise Deferred(f"rate limit {scope.scope} {scope.key!r} ({scope.limit}/"
                           f"{scope.window_s:g}s) reached; next slot in {wait:.1f}s",
                           retry_after_s=wait)
        metrics.RATE_LIMIT.labels("waited").inc()
        ticket.waited_s += wait
        await asyncio.sleep(wait)


def job_tokens(job: TextJob) -> int:
    """What a call charges to the model's token limit: its two messages, estimated, and its
    whole answer budget."""
    prompt = estimate(job.system) + estimate(job.user) + 2 * MESSAGE_OVERHEAD_TOKENS
    return prompt + (job.max_tokens or DEFAULT_ANSWER_TOKENS)


class _HeldRestart:
    """A sink that passes text on and holds a restart until it is known why the stream starts
    again (the next model of the chain, or a later attempt); text after it releases it."""

    def __init__(self, sink: StreamSink) -> None:
        self.sink = sink
        self.reason: str | None = None

    async def delta(self, text: str) -> None:
        await self.release()
        await self.sink.delta(text)

    async def restart(self, reason: str) -> None:
        self.reason = reason

    async def release(self, reason: str | None = None) -> None:
        if self.reason is not None:
            held, self.reason = self.reason, None
            await self.sink.restart(reason or held)


class MeteredText:
    """A TextProvider whose calls beyond a request's first are admitted before they go out,
    each against the limits of the model it goes to (fallbacks included)."""

    def __init__(self, inner: TextProvider, guard: Guard,
                 fallbacks: tuple[str, ...] = ()) -> None:
        self._inner = inner
        self._guard = guard
        self._fallbacks = fallbacks
        self.name = inner.name

    def models_for(self, requested: str | None) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self._inner.models_for(requested), *self._fallbacks)))

    async def complete(self, job: TextJob, sink: StreamSink | None = None) -> TextCompletion:
        """The chain's models in turn: the next one only after a failure the fallback policy
        sends on (5xx, time-out, unknown model, context overflow)."""
        models = self.models_for(job.model)
        for index, model in enumerate(models):
            last = index + 1 == len(models)
            held = _HeldRestart(sink) if sink is not None and not last else None
            try:
                completion = await self._one(replace(job, model=model), held or sink)
            except ServiceError as error:
                step = next_step(error, has_next_model=not last, waits_used=MAX_INLINE_WAITS)
                if held is not None:
                    await held.release(None if step.action != "fallback" else
                                       f"stream from {model} broke; restarting on "
                                       f"{models[index + 1]}")
                if step.action != "fallback":
                    raise
                log.info("provider.fallback", model=model, code=error.code,
                         next_model=models[index + 1])
                continue
            if held is not None:
                await held.release()
            return replace(completion, fallback_used=completion.fallback_used or index > 0)
        raise AssertionError("a model chain is never empty")

    async def _one(self, job: TextJob, sink: StreamSink | None) -> TextCompletion:
        """One model's call, admitted against its limits unless the request's admission
        already covers it."""
        with tracing.stage("llm.provider.call", provider=self.name):
            completion = await self._complete(job, sink)
        if isinstance(sink, ProgressSink):
            await sink.flush()  # the last gathered delta goes out before anything else
        return completion

    async def _complete(self, job: TextJob, sink: StreamSink | None) -> TextCompletion:
        ticket = TICKET.get()
        model = self._inner.models_for(job.model)[0]
        if ticket is None:
            return await self._inner.complete(job, sink)
        ticket.calls.spend()
        if ticket.used or ticket.model != model or ticket.ask is None or ticket.admitted is None:
            scopes = model_scopes(self._guard.limits, model, job_tokens(job))
            await admit_within(self._guard, Ask(ticket.kind, "", tuple(scopes)), ticket.emit,
                               ticket)
            with ticket.calls.timing():
                return await self._inner.complete(job, sink)
        ticket.used = True
        restamp = asyncio.create_task(self._guard.admission.restamp(ticket.ask, ticket.admitted))
        try:
            with ticket.calls.timing():
                return await self._inner.complete(job, sink)
        finally:
            await restamp

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __getattr__(self, name: str) -> Any:
        # Anything else the provider offers (its context window, ...) passes through.
        return getattr(self._inner, name)
