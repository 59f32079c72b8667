"""The pipeline around every handler: cache -> single-flight -> rate limits -> handler ->
cache store -> usage.

Before the provider is paid there are three Redis round trips on a cache miss and two on a hit
(store/admission.py: the job-ledger claim beside the cache generations, then the cache lookup and
single-flight claim, then every rate-limit scope at once), and one after (`Admission.finish`).
Identical requests on this replica wait on the local leader without any Redis call; followers
(local or on other replicas) answer with the leader's result marked `cached: true`, since they
did not pay for it. `cache: false` skips the lookup and single-flight (a fresh answer is
wanted) and the fresh answer replaces the cached one. Cache hits do not count against rate
limits: they cost the provider nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Protocol

import orjson

from llm_consumer import metrics, tracing
from llm_consumer.errors import Deferred
from llm_consumer.events import catalog
from llm_consumer.events.requests import TEXT_TO_IMAGE_KINDS, ContentRequested, ImageRequested
from llm_consumer.handlers.base import Deps, Handler, Reply, Request
from llm_consumer.handlers.limits import TICKET, Ticket, admit_within
from llm_consumer.images.service import ImageService
from llm_consumer.prompts.builder import kind_templates
from llm_consumer.prompts.tokens import MESSAGE_OVERHEAD_TOKENS, estimate
from llm_consumer.providers.base import TextProvider
from llm_consumer.store import cache
from llm_consumer.store.admission import Admitted, Ask, Hit, Known
from llm_consumer.store.guard import Guard
from llm_consumer.store.jobs import Claim
from llm_consumer.store.ratelimit import request_scopes
from llm_consumer.store.usage import Use, price_for

ADMIN = "llm:admin"
PROMPT_OVERHEAD_TOKENS = 300  # system message, instruction and schema around the context
OPERATIONS = {"theme.apply": "theme", "theme.analyze": "theme",
              "content.validate": "validation"}


def operation_of(data: ContentRequested | ImageRequested) -> str:
    if isinstance(data, ImageRequested):
        return ("image_text_to_image" if data.kind in TEXT_TO_IMAGE_KINDS
                else "image_to_image")
    return OPERATIONS.get(data.kind.value, "text")


def user_of(request: Request) -> str:
    """`data.user_id` when an admin asks on a user's behalf, else the token's subject."""
    user_id = request.data.user_id
    return user_id if user_id and request.principal.allows(ADMIN) else request.principal.subject


def model_of(data: ContentRequested | ImageRequested, default_model: str,
             text: TextProvider | None = None, images: ImageService | None = None) -> str:
    """The model the request will use: as the text provider resolves it when there is one; an
    image request's named model, else its provider's default model (GetImg's quotas are per
    model)."""
    if isinstance(data, ImageRequested):
        if images is not None:
            return images.model_for(data.options.provider, data.options.model)
        return data.options.model or data.options.provider or "image"
    named = data.model.name if data.model and data.model.name else None
    if text is not None:
        return text.models_for(named)[0]
    return named or default_model


def estimate_tokens(data: ContentRequested | ImageRequested, window: int | None = None) -> int:
    """Prompt + answer budget, estimated before the prompt exists (the calibrated estimate of
    the context, the theme and the chat turns, plus a fixed overhead; the answer budget in
    full), at most the model's context window (a bigger context is cut to fit it)."""
    if isinstance(data, ImageRequested):
        return 1
    theme = data.theme.model_dump(exclude_none=True) if data.theme else {}
    prompt = (estimate(orjson.dumps(data.context).decode())
              + (estimate(orjson.dumps(theme).decode()) if theme else 0)
              + sum(estimate(turn.content) + MESSAGE_OVERHEAD_TOKENS
                    for turn in data.messages or ()))
    answer = (data.model.max_tokens if data.model and data.model.max_tokens
              else kind_templates()[data.kind.value].max_tokens)
    tokens = prompt + PROMPT_OVERHEAD_TOKENS + answer
    return min(tokens, window) if window else tokens


@dataclass(frozen=True, slots=True)
class Plan:
    ask: Ask
    model: str
    user: str
    ttl_s: int


def plan_for(request: Request, guard: Guard, deps: Deps) -> Plan:
    data = request.data
    kind = data.kind.value
    model = model_of(data, guard.policy.default_model, deps.text, deps.images)
    user = user_of(request)
    window = deps.windows.windows.get(model, deps.windows.default)
    scopes = request_scopes(guard.limits, operation=operation_of(data), user=user, model=model,
                            tokens=estimate_tokens(data, window))
    ttl_s = guard.cache.ttl_for(kind)
    # Image answers name stored images only their owner may read: never shared across callers.
    owner = request.principal.subject if isinstance(data, ImageRequested) else ""
    ask = Ask(kind, cache.digest(request.envelope.type, data, model, owner), tuple(scopes),
              read_cache=data.cache and ttl_s > 0, coalesce=data.cache,
              lease_s=guard.policy.singleflight_wait_s,
              job=request.key if request.claims_job else None)
    return Plan(ask, model, user, ttl_s)


class Guarded(Protocol):
    """A handler behind the pipeline: its replies, or the job ledger's Claim on a request the
    ledger already knew."""

    async def __call__(self, request: Request, deps: Deps) -> list[Reply] | Claim: ...


def _replies(resolved: tuple[list[Reply], bytes | None] | Claim) -> list[Reply] | Claim:
    return resolved if isinstance(resolved, Claim) else resolved[0]


def guarded(handler: Handler) -> Guarded:
    """`handler` behind the pipeline (or as it is when the app built no guard)."""
    async def run(request: Request, deps: Deps) -> list[Reply] | Claim:
        if deps.guard is None:
            return await handler(request, deps)
        return await _Run(handler, request, deps, deps.guard).go()

    return run


class _Run:
    def __init__(self, handler: Handler, request: Request, deps: Deps, guard: Guard) -> None:
        self.handler = handler
        self.request = request
        self.deps = deps
        self.guard = guard
        self.plan = plan_for(request, guard, deps)
        self.ticket = Ticket(self.plan.model, self.plan.ask.kind, request.emit, request.calls)

    async def go(self) -> list[Reply] | Claim:
        """The request's replies, or the job ledger's Claim when it already knew the request
        (done, cancelled, running elsewhere)."""
        ask = self.plan.ask
        if not ask.coalesce:
            return _replies(await self._resolve(ask))
        deadline = time.monotonic() + self.guard.policy.singleflight_wait_s
        while True:  # follow a local leader; lead when there is none (or it failed)
            flight, leading = self.guard.flights.join(ask.digest)
            if leading:
                break
            if ask.job is not None:  # no admission to ride on: claim on its own
                claim = await self.guard.claim_job(ask.job)
                if claim.verdict != "claimed":
                    return claim
                await self.request.on_running()
                ask = replace(ask, job=None)
            stored = await self.guard.flights.follow(flight, deadline - time.monotonic())
            if stored is not None:
                return await self._answer(stored)
            if time.monotonic() >= deadline:  # a slow leader: compute without waiting more
                return _replies(await self._resolve(replace(ask, coalesce=False)))
        result: bytes | None = None
        try:
            resolved = await self._resolve(ask)
            if isinstance(resolved, Claim):
                return resolved
            replies, result = resolved
            return replies
        finally:
            self.guard.flights.land(ask.digest, flight, result)

    async def _resolve(self, ask: Ask) -> tuple[list[Reply], bytes | None] | Claim:
        deadline = time.monotonic() + self.guard.policy.singleflight_wait_s
        while True:
            try:
                with tracing.stage("llm.admission", model=self.plan.model):
                    verdict = await admit_within(self.guard, ask, self.request.emit,
                                                 self.ticket)
            except Deferred:  # claimed, then over a rate limit: it ran, and waits now
                if ask.job is not None:
                    await self.request.on_running()
                raise
            if isinstance(verdict, Known):
                return verdict.claim
            if ask.job is not None:
                await self.request.on_running()
                ask = replace(ask, job=None)
            if isinstance(verdict, Hit):
                return await self._answer(verdict.stored), verdict.stored
            if isinstance(verdict, Admitted):
                return await self._compute(ask, verdict)
            outcome = await self.guard.admission.await_leader(ask, verdict.generation, deadline,
                                                              verdict.leader)
            if isinstance(outcome, bytes):
                return await self._answer(outcome), outcome
            if outcome == "timeout":  # the leader is slow or gone: compute it here
                ask = replace(ask, coalesce=False)

    async def _compute(self, ask: Ask, admitted: Admitted) -> tuple[list[Reply], bytes | None]:
        self.ticket.ask, self.ticket.admitted = ask, admitted
        token = TICKET.set(self.ticket)
        try:
            replies = await self.handler(self.request, self.deps)
        except BaseException:
            await self.guard.admission.finish(ask, admitted)  # end the claim: followers move on
            raise
        finally:
            TICKET.reset(token)
        storable = all("cached" in type(r.data).model_fields for r in replies)
        stored = cache.encode([(r.type, r.data.model_dump(mode="json")) for r in replies]
                              ) if storable else None
        await self.guard.admission.finish(ask, admitted, stored=stored, ttl_s=self.plan.ttl_s,
                                          use=self._use(replies, hit=False),
                                          record=self._record(replies))
        return replies, stored

    async def _answer(self, stored: bytes) -> list[Reply]:
        """Replies of this request from a stored answer: its id, `cached`, its duration."""
        replies = []
        for event_type, data in cache.decode(stored):
            own = {"request_id": self.request.id, "cached": True,
                   "duration_ms": self.request.elapsed_ms()}
            model = catalog.EVENTS[event_type].model
            replies.append(Reply(event_type, model.model_validate({**data, **own})))
        await self.guard.admission.finish(self.plan.ask, None, use=self._use(replies, hit=True),
                                          record=self._record(replies))
        return replies

    def _record(self, replies: list[Reply]) -> tuple[str, list[bytes]] | None:
        seal = self.request.seal
        return (self.request.key, seal(replies)) if seal is not None else None

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
