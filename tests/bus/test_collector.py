"""A service process (`run`) sets the garbage collector up for serving before it consumes
(app.py, tune_collector): what start-up built is frozen, so full collections under load walk
only the requests' objects, and young collections come every YOUNG_GC_THRESHOLD allocations,
not every 700; the service answers as before."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from llm_consumer.app import YOUNG_GC_THRESHOLD
from llm_consumer.events import catalog
from llm_consumer.settings import Settings
from tests.bus.test_operations import SHEET
from tests.conftest import Service


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
        answered = await service.request("world.location", SHEET)
    finally:
        await service.close()
        gc.unfreeze()  # back in the collector's sight, for the tests after this one
        gc.set_threshold(*thresholds)
    assert frozen > 50_000, f"only {frozen} objects frozen: the start-up heap is far larger"
    assert young == YOUNG_GC_THRESHOLD > thresholds[0]
    assert answered.final is not None and answered.final["type"] == catalog.CONTENT_GENERATED
