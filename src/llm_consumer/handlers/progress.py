"""Streamed text becomes ordered `content.progress` events, coalesced.

A model streams a token at a time; one event per token made a streamed answer cost hundreds of
publishes, each paid by every subscriber of the hub. Deltas are therefore gathered and sent
when at least `min_chars` have gathered and `interval_s` has passed since the last event, or
when text has waited `max_wait_s` (a slow model still shows progress). What is left is sent by
`flush`, which runs when the provider call ends, before any result. `seq` counts events, in
publication order; a restart drops text not yet sent (it is void anyway) and says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from llm_consumer.events import catalog
from llm_consumer.events.results import ContentProgress
from llm_consumer.handlers.base import ProgressPolicy, Request

__all__ = ["ProgressPolicy", "ProgressSink"]


class ProgressSink:
    """A StreamSink that publishes coalesced deltas (and each restart) with the next `seq`."""

    def __init__(self, request: Request, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._request = request
        self._policy = request.progress
        self._clock = clock
        self._seq = 0
        self._pending: list[str] = []
        self._pending_chars = 0
        self._last_sent = clock()

    async def delta(self, text: str) -> None:
        if not text:
            return
        self._pending.append(text)
        self._pending_chars += len(text)
        waited = self._clock() - self._last_sent
        policy = self._policy
        if (self._pending_chars >= policy.min_chars and waited >= policy.interval_s) or (
                waited >= policy.max_wait_s):
            await self.flush()

    async def flush(self) -> None:
        """Send what has gathered, if anything."""
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._pending_chars = 0
        await self._send(ContentProgress(request_id=self._request.id, seq=self._seq, delta=text))

    async def restart(self, reason: str) -> None:
        self._pending.clear()
        self._pending_chars = 0
        await self._send(ContentProgress(request_id=self._request.id, seq=self._seq, delta="",
                                         reset=True, notice=reason))

    async def _send(self, progress: ContentProgress) -> None:
        self._seq += 1
        self._last_sent = self._clock()
        await self._request.emit(catalog.CONTENT_PROGRESS, progress)
