"""The run stage: cache -> single-flight -> rate limits -> handler -> cache store -> usage.

`run_admitted` takes a parsed, authorized request and returns what became of it as a value:
its `Answer`, or the job ledger's `Claim` when the ledger already knew the request (done,
cancelled, running elsewhere). A rate limit too long to wait out, a batched request and a
failed handler end it with their error (`Deferred`, `Batched`, `ServiceError`), which the
consumer's job task turns into a value for the outcome table.

Before the provider is paid there are three Redis round trips on a cache miss and two on a hit
(store/admission.py: the job-ledger claim beside the cache generations, then the cache lookup and
single-flight claim, then every rate-limit scope at once), and one after (`Admission.finish`,
which also records the final events in the job ledger). The job is claimed in one place, the
admission's first question; a request following a local leader asks it with no scopes.
A cache hit is answered at once, so its job goes straight to `completed`: `running` is published
only for a request that waits (on the provider, a leader or a rate limit), and once.
Identical requests on this replica wait on the local leader without any Redis call; followers
(local or on other replicas) answer with the leader's result marked `cached: true`, since they
did not pay for it. `cache: false` skips the lookup and single-flight (a fresh answer is
wanted) and the fresh answer replaces the cached one. Cache hits do not count against rate
limits: they cost the provider nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from llm_consumer import metrics, tracing
from llm_consumer.admission.plan import Plan, plan_for
from llm_consumer.admission.waits import Ticket, admit_within
from llm_consumer.errors import Deferred
from llm_consumer.events import catalog
from llm_consumer.events.envelope import Envelope, encode
from llm_consumer.events.results import JobStatus
from llm_consumer.handlers.base import Deps, Handler, Reply, Request
from llm_consumer.store import cache
from llm_consumer.store.admission import Admitted, Ask, Hit, Known
from llm_consumer.store.guard import Guard
from llm_consumer.store.jobs import Claim
from llm_consumer.store.usage import Use, price_for


@dataclass(frozen=True, slots=True)
class Answer:
    """What a request that ran (or was answered from the cache) replies. A request that claims
    its job has `events` in the job ledger already, written with Admission.finish; when that call
    fails Redis is in its cool-down, and the request has no record, as in any Redis outage."""

    replies: tuple[Reply, ...]
    events: tuple[Envelope, ...]  # the replies as the events to publish
    encoded: tuple[bytes, ...]  # `events` encoded once: the ledger's record and the bodies

    @classmethod
    def of(cls, replies: list[Reply], events: tuple[Envelope, ...]) -> Answer:
        return cls(tuple(replies), events, tuple(encode(event) for event in events))


async def run_admitted(handler: Handler, request: Request, deps: Deps,
                       guard: Guard) -> Answer | Claim:
    """`handler` behind the admission: the request's Answer, or the ledger's Claim on it."""
    return await _Run(handler, request, deps, guard).go()


def _answer_or_claim(resolved: tuple[Answer, bytes | None] | Claim) -> Answer | Claim:
    return resolved if isinstance(resolved, Claim) else resolved[0]


class _Run:
    def __init__(self, handler: Handler, request: Request, deps: Deps, guard: Guard) -> None:
        self.handler = handler
        self.request = request
        self.deps = deps
        self.guard = guard
        self.plan: Plan = plan_for(request, guard, deps)
        self.ticket = Ticket(self.plan.model, self.plan.ask.kind, request.emit, request.calls)

    async def go(self) -> Answer | Claim:
        ask = self.plan.ask
        if not ask.coalesce:
            return _answer_or_claim(await self._resolve(ask))
        deadline = time.monotonic() + self.guard.policy.singleflight_wait_s
        while True:  # follow a local leader; lead when there is none (or it failed)
            flight, leading = self.guard.flights.join(ask.digest)
            if leading:
                break
            if ask.job is not None:  # no admission of its own to ride on: claim alone
                verdict = await self.guard.admission.admit(
                    Ask(ask.kind, "", (), lease_s=ask.lease_s, job=ask.job))
                if isinstance(verdict, Known):
                    return verdict.claim
                ask = await self._running(ask)
            stored = await self.guard.flights.follow(flight, deadline - time.monotonic())
            if stored is not None:
                return await self._answer(stored)
            if time.monotonic() >= deadline:  # a slow leader: compute without waiting more
                return _answer_or_claim(await self._resolve(replace(ask, coalesce=False)))
        stored = None
        try:
            resolved = await self._resolve(ask)
            if isinstance(resolved, Claim):
                return resolved
            answer, stored = resolved
            return answer
        finally:
            self.guard.flights.land(ask.digest, flight, stored)

    async def _resolve(self, ask: Ask) -> tuple[Answer, bytes | None] | Claim:
        """The answer and its stored form (what local followers are handed), or the Claim."""
        deadline = time.monotonic() + self.guard.policy.singleflight_wait_s
        while True:
            try:
                with tracing.stage("llm.admission", model=self.plan.model):
                    verdict = await admit_within(self.guard, ask, self.request.emit,
                                                 self.ticket)
            except Deferred:  # claimed, then over a rate limit: it ran, and waits now
                await self._running(ask)
                raise
            if isinstance(verdict, Known):
                return verdict.claim
            if isinstance(verdict, Hit):  # answered at once: `completed` with no `running`
                return await self._answer(verdict.stored), verdict.stored
            ask = await self._running(ask)
            if isinstance(verdict, Admitted):
                return await self._compute(ask, verdict)
            outcome = await self.guard.admission.await_leader(ask, verdict.generation, deadline,
                                                              verdict.leader)
            if isinstance(outcome, bytes):
                return await self._answer(outcome), outcome
            if outcome == "timeout":  # the leader is slow or gone: compute it here
                ask = replace(ask, coalesce=False)

    async def _running(self, ask: Ask) -> Ask:
        """Once the job claim is held: job.status `running`, and later questions ask no claim
        (so it is published once: only an ask that still carries the job gets here to emit)."""
        if ask.job is None:
            return ask
        await self.request.emit(catalog.JOB_STATUS, JobStatus(
            request_id=self.request.id, state="running", attempt=self.request.attempt))
        return replace(ask, job=None)

    async def _compute(self, ask: Ask, admitted: Admitted) -> tuple[Answer, bytes | None]:
        self.ticket.ask, self.ticket.admitted = ask, admitted
        deps = self.deps
        if deps.metered_text is not None:
            deps = replace(deps, text=deps.metered_text(self.ticket))
        try:
            replies = await self.handler(self.request, deps)
        except BaseException:
            await self.guard.admission.finish(ask, admitted)  # end the claim: followers move on
            raise
        storable = all("cached" in type(r.data).model_fields for r in replies)
        stored = cache.encode([(r.type, r.data.model_dump(mode="json"))
                               for r in replies]) if storable else None
        answer = self._answer_of(replies)
        await self.guard.admission.finish(ask, admitted, stored=stored, ttl_s=self.plan.ttl_s,
                                          use=self._use(replies, hit=False),
                                          record=self._record(answer))
        return answer, stored

    async def _answer(self, stored: bytes) -> Answer:
        """This request's answer from a stored one: its id, `cached`, its duration."""
        replies = []
        for event_type, data in cache.decode(stored):
            own = {"request_id": self.request.id, "cached": True,
                   "duration_ms": self.request.elapsed_ms()}
            model = catalog.EVENTS[event_type].model
            replies.append(Reply(event_type, model.model_validate({**data, **own})))
        answer = self._answer_of(replies)
        await self.guard.admission.finish(self.plan.ask, None, use=self._use(replies, hit=True),
                                          record=self._record(answer))
        return answer

    def _answer_of(self, replies: list[Reply]) -> Answer:
        return Answer.of(replies, self.request.final_events(replies))

    def _record(self, answer: Answer) -> tuple[str, list[bytes]] | None:
        """The job-ledger record Admission.finish writes (none when warming, which claims no
        job)."""
        if not self.request.claims_job:
            return None
        return self.request.key, list(answer.encoded)

    def _use(self, replies: list[Reply], *, hit: bool) -> Use:
        first = replies[0].data if replies else None
        model = str(getattr(first, "model_used", None) or self.plan.model)
        usage = getattr(first, "token_usage", None)
        if hit or usage is None:
            use = Use(model, self.plan.ask.kind, self.plan.user, cache_hit=hit)
        else:
            use = Use(model, self.plan.ask.kind, self.plan.user, usage.prompt_tokens,
                      usage.completion_tokens)
        metrics.count_use(use, price_for(self.guard.prices, model))
        return use
