"""The one routing table: (event type, kind) -> handler."""

from __future__ import annotations

from llm_consumer.events import catalog
from llm_consumer.events.requests import ContentRequested, ImageRequested
from llm_consumer.handlers.base import Handler
from llm_consumer.handlers.content import CONTENT_HANDLERS
from llm_consumer.handlers.image import IMAGE_HANDLERS

ROUTES: dict[tuple[str, str], Handler] = {
    **{(catalog.CONTENT_REQUESTED, k.value): h for k, h in CONTENT_HANDLERS.items()},
    **{(catalog.IMAGE_REQUESTED, k.value): h for k, h in IMAGE_HANDLERS.items()},
}


def route(event_type: str, data: ContentRequested | ImageRequested) -> Handler:
    # Request models already restrict `kind` to known values, so a miss is a programming error.
    return ROUTES[(event_type, data.kind.value)]
