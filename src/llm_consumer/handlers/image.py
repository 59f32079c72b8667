"""Image kinds. No image provider is wired in this build: every kind ends in a clear
`generation.failed` (`no_provider`) instead of vanishing."""

from __future__ import annotations

from llm_consumer.errors import PermanentFailure
from llm_consumer.events.requests import ImageKind
from llm_consumer.handlers.base import Deps, Reply, Request


async def handle_image(request: Request, deps: Deps) -> list[Reply]:
    raise PermanentFailure(
        "no image provider is available in this build (GetImg.AI and OpenAI images are "
        "not wired yet)",
        code="no_provider",
    )


IMAGE_HANDLERS = {kind: handle_image for kind in ImageKind}
