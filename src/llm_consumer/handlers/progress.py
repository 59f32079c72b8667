"""Streamed text becomes ordered `content.progress` events."""

from __future__ import annotations

from llm_consumer.events import catalog
from llm_consumer.events.results import ContentProgress
from llm_consumer.handlers.base import Request


class ProgressSink:
    """A StreamSink that publishes each delta (and each restart) with the next `seq`.

    Deltas are published one after another (each awaited until confirmed), so `seq` order is
    publication order.
    """

    def __init__(self, request: Request) -> None:
        self._request = request
        self._seq = 0

    async def delta(self, text: str) -> None:
        await self._send(ContentProgress(request_id=self._request.id, seq=self._seq, delta=text))

    async def restart(self, reason: str) -> None:
        await self._send(ContentProgress(request_id=self._request.id, seq=self._seq, delta="",
                                         reset=True, notice=reason))

    async def _send(self, progress: ContentProgress) -> None:
        self._seq += 1
        await self._request.emit(catalog.CONTENT_PROGRESS, progress)
