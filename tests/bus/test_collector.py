"""A service process (`run`) sets the garbage collector up for serving before it consumes
(collector.py): what start-up built is frozen, the allocation threshold is only a backstop,
and collections come by time - the young generation every YOUNG_EVERY_S, the older ones every
so many of those - so under a steady load the young generation cannot grow for seconds and
stop the event loop for hundreds of milliseconds; the service answers as before."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

from llm_consumer.collector import YOUNG_GC_THRESHOLD, collect_by_time
from llm_consumer.events import catalog
from llm_consumer.settings import Settings
from tests.bus.test_operations import SHEET
from tests.conftest import Service


def young_collections() -> int:
    return int(gc.get_stats()[0]["collections"])


async def test_run_tunes_the_collector_and_still_answers(
    settings_factory: Callable[..., Settings], fake_openai: Any,
) -> None:
    gc.unfreeze()  # this test process may have frozen before (another service started so)
    thresholds = gc.get_threshold()
    service = Service(settings_factory(openai_api_key="sk-test",
                                       openai_base_url=fake_openai.base_url), tune_gc=True)
    try:
        await service.start()
        frozen, young = gc.get_freeze_count(), gc.get_threshold()[0]
        before = young_collections()
        await asyncio.sleep(1.0)  # idle: nothing allocates enough to reach the threshold
        by_time = young_collections() - before
        answered = await service.request("world.location", SHEET)
    finally:
        await service.close()
        gc.unfreeze()  # back in the collector's sight, for the tests after this one
        gc.set_threshold(*thresholds)
    assert frozen > 50_000, f"only {frozen} objects frozen: the start-up heap is far larger"
    assert young == YOUNG_GC_THRESHOLD > thresholds[0]
    assert by_time >= 3, f"{by_time} young collections in 1 s (one every 0.25 s expected)"
    assert answered.final is not None and answered.final["type"] == catalog.CONTENT_GENERATED


async def test_older_generations_are_collected_every_so_many_young_collections() -> None:
    collected: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected.append(info["generation"])

    thresholds = gc.get_threshold()
    gc.set_threshold(10**7)  # only the scheduled collections, none set off by allocations
    gc.callbacks.append(note)
    task = asyncio.create_task(collect_by_time(0.01, middle_every=3, full_every=6))
    try:
        async with asyncio.timeout(5):
            while len(collected) < 12:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        gc.callbacks.remove(note)
        gc.set_threshold(*thresholds)
    assert collected[:12] == [0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2], collected
