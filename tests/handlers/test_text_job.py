"""The text job a request becomes: a large context is fitted off the event loop, so one
hostile megabyte does not stall every other request."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from llm_consumer.auth import Principal
from llm_consumer.events import catalog
from llm_consumer.events.content import CONTENT_MODELS
from llm_consumer.events.envelope import new_event
from llm_consumer.events.requests import ContentRequested
from llm_consumer.handlers.base import Deps, Request
from llm_consumer.handlers.text_generation import OFF_LOOP_BYTES, _prepared_job
from llm_consumer.prompts.fitting import ContextWindows, serialize
from llm_consumer.prompts.tokens import EstimatedCounter


class SlowCounter:
    """A tokenizer that takes its time outside the interpreter, as llama.cpp's does."""

    exact = False

    def __init__(self) -> None:
        self.threads: set[str] = set()

    def count(self, text: str) -> int:
        self.threads.add(threading.current_thread().name)
        time.sleep(0.02 + len(text) / 5_000_000)  # about 0.2 s for a megabyte
        return EstimatedCounter().count(text)


class OneModel:
    def models_for(self, requested: str | None) -> tuple[str, ...]:
        return ("slow-model",)


def request_for(context: dict[str, Any]) -> Request:
    data = ContentRequested.model_validate({"kind": "character.backstory", "context": context,
                                            "theme": {"preset": "grimdark"}})

    async def emit(event_type: str, payload: Any) -> None:
        return None

    return Request(envelope=new_event(catalog.CONTENT_REQUESTED, data, source="/peer"),
                   data=data, principal=Principal("peer", frozenset({"llm:content"})),
                   attempt=0, emit=emit)


async def test_a_large_context_is_fitted_while_the_loop_keeps_serving() -> None:
    counter = SlowCounter()
    deps = Deps(text=None, windows=ContextWindows({"slow-model": 4096},
                                                  counters={"slow-model": counter}))
    notes = " ".join(f"word{i % 997}" for i in range(150_000))
    request = request_for({"name": "Mira", "notes": notes})
    ticks = 0
    fitting = asyncio.create_task(_prepared_job(request, deps, OneModel(),  # type: ignore[arg-type]
                                                CONTENT_MODELS["character.backstory"]))
    while not fitting.done():
        await asyncio.sleep(0.01)
        ticks += 1
    job = fitting.result()
    assert threading.main_thread().name not in counter.threads, "counted on a worker thread"
    assert ticks >= 5, f"the loop ran only {ticks} times while the context was fitted"
    assert serialize({"name": "Mira"})[1:-1] in job.user and len(job.user) < 20_000

    small = request_for({"name": "Mira"})
    assert len(serialize(small.data.context)) < OFF_LOOP_BYTES  # type: ignore[union-attr]
    counter.threads.clear()
    await _prepared_job(small, deps, OneModel(),  # type: ignore[arg-type]
                        CONTENT_MODELS["character.backstory"])
    assert counter.threads <= {threading.main_thread().name}, "a small context stays inline"
