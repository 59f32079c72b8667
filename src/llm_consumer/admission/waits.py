"""Rate-limit waits and notices.

`admit_within` asks the admission until it gets an answer other than "limited": a short wait
(the next slot within RATE_LIMIT_INLINE_WAIT_S, counting earlier waits of this delivery) happens
in place; a longer one raises `Deferred`, which the consumer turns into a delay-queue trip that
holds no consumer slot. `rate_limit.warning` / `rate_limit.exceeded` notices come back from the
same script call already throttled (one per second per scope and key, across replicas).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from llm_consumer import metrics
from llm_consumer.errors import Deferred
from llm_consumer.events import catalog
from llm_consumer.events.results import RateLimitNotice
from llm_consumer.handlers.base import CallBudget, Emit
from llm_consumer.store.admission import Admitted, Ask, Follow, Hit, Known, Limited
from llm_consumer.store.guard import Guard
from llm_consumer.store.ratelimit import Notice


@dataclass(slots=True)
class Ticket:
    """One request's provider calls as the admission sees them: the first call, admitted with
    the request itself (`ask`, `admitted` once the run stage has them), and the waits and calls
    spent so far. The run stage hands it to the request's metered provider."""

    model: str
    kind: str
    emit: Emit
    calls: CallBudget = field(default_factory=CallBudget)  # the request's cap on provider calls
    waited_s: float = 0.0
    ask: Ask | None = None
    admitted: Admitted | None = None
    used: bool = False


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
