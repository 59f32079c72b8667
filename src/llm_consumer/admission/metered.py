"""The metering of a request's provider calls after its first.

The run stage's admission covers a request's first provider call (its `Ticket`); when that call
leaves, its log entries are moved to that moment (`restamp`, run alongside the call), so
windows count calls as the provider receives them. `MeteredText` wraps the text provider so
that any further call in the same request (the repair of an unusable answer, another model) is
admitted against that model's limits right before it goes out. It walks the fallback chain
itself (the provider it wraps is built without one): a fallback model's call is admitted as
that model, against its own limits, not the first model's.

The app builds one `MeteredText` per request from the shared parts (`for_request`), so the
ticket travels as a constructor argument, never through a context variable.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import structlog

from llm_consumer import tracing
from llm_consumer.admission.waits import Ticket, admit_within
from llm_consumer.errors import ServiceError
from llm_consumer.handlers.progress import ProgressSink
from llm_consumer.prompts.tokens import MESSAGE_OVERHEAD_TOKENS, estimate
from llm_consumer.providers.base import StreamSink, TextCompletion, TextJob, TextProvider
from llm_consumer.providers.fallback_policy import MAX_INLINE_WAITS, next_step
from llm_consumer.store.admission import Ask
from llm_consumer.store.guard import Guard
from llm_consumer.store.ratelimit import model_scopes

log = structlog.get_logger(__name__)

DEFAULT_ANSWER_TOKENS = 1000


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
    each against the limits of the model it goes to (fallbacks included). Without a ticket
    (the shared instance: model names, batch answers) calls go out unmetered."""

    def __init__(self, inner: TextProvider, guard: Guard, fallbacks: tuple[str, ...] = (),
                 ticket: Ticket | None = None) -> None:
        self._inner = inner
        self._guard = guard
        self._fallbacks = fallbacks
        self._ticket = ticket
        self.name = inner.name

    def for_request(self, ticket: Ticket) -> MeteredText:
        """This provider metering one request's calls against its ticket."""
        return MeteredText(self._inner, self._guard, self._fallbacks, ticket)

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
        ticket = self._ticket
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
        admission = self._guard.admission
        restamp = (asyncio.create_task(admission.restamp(ticket.ask, ticket.admitted))
                   if admission.restamp_due(ticket.ask, ticket.admitted) else None)
        try:
            with ticket.calls.timing():
                return await self._inner.complete(job, sink)
        finally:
            if restamp is not None:
                await restamp

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __getattr__(self, name: str) -> Any:
        # Anything else the provider offers (its context window, ...) passes through.
        return getattr(self._inner, name)
