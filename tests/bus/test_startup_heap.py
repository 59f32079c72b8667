"""A service process (`run`) freezes what start-up built before it consumes, so the garbage
collector's full collections under load walk only the requests' objects (app.py,
freeze_startup_heap); the service answers as before."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from llm_consumer.events import catalog
from llm_consumer.settings import Settings
from tests.bus.test_operations import SHEET
from tests.conftest import Service


async def test_run_freezes_the_start_up_heap_and_still_answers(
    settings_factory: Callable[..., Settings], fake_openai: Any,
) -> None:
    gc.unfreeze()  # this test process may have frozen before (another service started so)
    service = Service(settings_factory(openai_api_key="sk-test",
                                       openai_base_url=fake_openai.base_url), freeze_heap=True)
    try:
        await service.start()
        frozen = gc.get_freeze_count()
        answered = await service.request("world.location", SHEET)
    finally:
        await service.close()
        gc.unfreeze()  # back in the collector's sight, for the tests after this one
    assert frozen > 50_000, f"only {frozen} objects frozen: the start-up heap is far larger"
    assert answered.final is not None and answered.final["type"] == catalog.CONTENT_GENERATED
