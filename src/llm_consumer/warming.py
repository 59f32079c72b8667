"""Cache warming: requests generated through the service's own pipeline (cache, single-flight,
rate limits, usage) with the configured text provider, as `run` builds it, but without the
broker. `llm-consumer cache warm` renders its progress."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from pydantic import BaseModel

from llm_consumer.auth import Principal
from llm_consumer.errors import Deferred, ServiceError
from llm_consumer.events.envelope import Envelope
from llm_consumer.events.requests import ContentRequested, ImageRequested
from llm_consumer.settings import Settings
from llm_consumer.store.client import RedisClient
from llm_consumer.store.jobs import Claim

WARMER = Principal("cache-warm", frozenset({"llm:content", "llm:image", "llm:admin"}))
Item = tuple[Envelope, ContentRequested | ImageRequested]
Outcome = str  # "generated", "cached" or "failed"


async def warm(settings: Settings, redis: RedisClient, items: list[Item], concurrency: int, *,
               on_done: Callable[[Counter[Outcome]], None] = lambda _: None,
               on_failure: Callable[[Item, ServiceError], None] = lambda _i, _e: None,
               ) -> Counter[Outcome]:
    """Generate every item, `concurrency` at once; a rate limit is waited out, not failed."""
    from llm_consumer.admission.metered import MeteredText
    from llm_consumer.admission.run import run_admitted
    from llm_consumer.app import build_guard, build_text_provider, context_windows, text_fallbacks
    from llm_consumer.handlers.base import Deps, Request
    from llm_consumer.handlers.routes import route

    guard = build_guard(settings, redis)
    text = build_text_provider(settings, observe=guard.observe, redis=redis)
    metered = MeteredText(text, guard, text_fallbacks(settings))
    deps = Deps(text=metered, windows=context_windows(settings, text),
                metered_text=metered.for_request)
    outcomes: Counter[Outcome] = Counter()
    gate = asyncio.Semaphore(concurrency)

    async def quiet(event_type: str, data: BaseModel) -> None:
        """Notices (rate-limit warnings) have nobody to go to here."""

    async def one(envelope: Envelope, data: ContentRequested | ImageRequested) -> Outcome:
        handler = route(envelope.type, data)
        while True:
            request = Request(envelope=envelope, data=data, principal=WARMER, attempt=0,
                              emit=quiet)
            try:
                answer = await run_admitted(handler, request, deps, guard)
            except Deferred as deferred:  # over a rate limit: wait here, as long as it takes
                await asyncio.sleep(deferred.retry_after_s)
                continue
            except ServiceError as error:
                on_failure((envelope, data), error)
                return "failed"
            if isinstance(answer, Claim):  # never: warming makes no job-ledger claims
                return "cached"
            replies = answer.replies
            return "cached" if replies and getattr(replies[0].data, "cached", False) else (
                "generated")

    async def tracked(envelope: Envelope, data: ContentRequested | ImageRequested) -> None:
        async with gate:
            outcomes[await one(envelope, data)] += 1
        on_done(outcomes)

    try:
        await asyncio.gather(*(tracked(e, d) for e, d in items))
    finally:
        await text.aclose()
    return outcomes
