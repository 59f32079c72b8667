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
answer, another model) is admitted against that model's limits right before it goes out.
"""

from __future__ import annotations

import asyncio
import math
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from llm_consumer import metrics
from llm_consumer.errors import Deferred
from llm_consumer.events import catalog
from llm_consumer.events.results import RateLimitNotice
from llm_consumer.handlers.base import CallBudget, Emit
from llm_consumer.providers.base import StreamSink, TextCompletion, TextJob, TextProvider
from llm_consumer.store.admission import Admitted, Ask, Follow, Hit, Known, Limited
from llm_consumer.store.guard import Guard
from llm_consumer.store.ratelimit import Notice, model_scopes

DEFAULT_ANSWER_TOKENS = 1000
CHARS_PER_TOKEN = 4


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
    prompt = math.ceil((len(job.system) + len(job.user)) / CHARS_PER_TOKEN)
    return prompt + (job.max_tokens or DEFAULT_ANSWER_TOKENS)


class MeteredText:
    """A TextProvider whose calls beyond a request's first are admitted before they go out."""

    def __init__(self, inner: TextProvider, guard: Guard) -> None:
        self._inner = inner
        self._guard = guard
        self.name = inner.name

    def models_for(self, requested: str | None) -> tuple[str, ...]:
        return self._inner.models_for(requested)

    async def complete(self, job: TextJob, sink: StreamSink | None = None) -> TextCompletion:
        ticket = TICKET.get()
        model = self._inner.models_for(job.model)[0]
        if ticket is None:
            return await self._inner.complete(job, sink)
        ticket.calls.spend()
        if ticket.used or ticket.model != model or ticket.ask is None or ticket.admitted is None:
            scopes = model_scopes(self._guard.limits, model, job_tokens(job))
            await admit_within(self._guard, Ask(ticket.kind, "", tuple(scopes)), ticket.emit,
                               ticket)
            return await self._inner.complete(job, sink)
        ticket.used = True
        restamp = asyncio.create_task(self._guard.admission.restamp(ticket.ask, ticket.admitted))
        try:
            return await self._inner.complete(job, sink)
        finally:
            await restamp

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __getattr__(self, name: str) -> Any:
        # Anything else the provider offers (its context window, ...) passes through.
        return getattr(self._inner, name)
