"""What a request gets when every remote model's circuit is open (BREAKER_OPEN_FALLBACK).

`defer`: a TransientFailure whose `retry_after` is the time until the first breaker lets a
probe through; the consumer waits that long in a delay queue (an attempt is used). `local`: the
embedded model answers instead ("simpler content"), marked `fallback_used` with its own
`model_used`. Both are decided before any call or admission of the remote chain; a request
whose chain fails and leaves every breaker open is answered the same way.
"""

from __future__ import annotations

from dataclasses import replace

import structlog

from llm_consumer.errors import Deferred, TransientFailure
from llm_consumer.providers.base import StreamSink, TextCompletion, TextJob, TextProvider
from llm_consumer.providers.breaker import BreakerBoard

log = structlog.get_logger(__name__)


class OpenCircuitFallback:
    """A TextProvider over the remote chain (`inner`) that answers with `simpler` (or defers,
    when there is none) while every model of a job's chain has its circuit open."""

    def __init__(self, inner: TextProvider, board: BreakerBoard,
                 simpler: TextProvider | None = None) -> None:
        self._inner = inner
        self.board = board
        self._simpler = simpler
        self.name = inner.name

    def over(self, inner: TextProvider) -> OpenCircuitFallback:
        """The same fallback over another chain (one request's metered chain)."""
        return OpenCircuitFallback(inner, self.board, self._simpler)

    def models_for(self, requested: str | None) -> tuple[str, ...]:
        return self._inner.models_for(requested)

    async def complete(self, job: TextJob, sink: StreamSink | None = None) -> TextCompletion:
        models = self.models_for(job.model)
        if self.board.all_blocked(models):
            return await self._without_remote(job, models, sink)
        try:
            return await self._inner.complete(job, sink)
        except TransientFailure as error:
            if isinstance(error, Deferred) or not self.board.all_blocked(models):
                raise  # a rate-limit wait is not an outage
            if sink is not None and self._simpler is not None:
                await sink.restart("every remote model is unavailable; answering with the "
                                   "embedded model")
            return await self._without_remote(job, models, sink)

    async def _without_remote(self, job: TextJob, models: tuple[str, ...],
                              sink: StreamSink | None) -> TextCompletion:
        wait = self.board.retry_after(models)
        if self._simpler is None:
            raise TransientFailure(
                f"every {self.board.provider} model ({', '.join(models)}) is unavailable "
                f"(circuits open); deferred for {wait:.0f}s", code="provider_unavailable",
                retry_after_s=max(wait, 1.0))
        log.warning("provider.simpler_content", provider=self.board.provider,
                    models=list(models), simpler=self._simpler.name)
        completion = await self._simpler.complete(replace(job, model=None), sink)
        return replace(completion, fallback_used=True)

    async def aclose(self) -> None:
        await self._inner.aclose()  # the embedded model is closed by whoever built it

    def __getattr__(self, name: str) -> object:
        # Anything else the provider offers (its context window, ...) passes through.
        return getattr(self._inner, name)
