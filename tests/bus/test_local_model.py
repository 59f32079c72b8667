"""Every content kind on the embedded model: a well-formed, themed result (or, for a tiny
model, at worst a clear failure after one repair, never a malformed event)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llm_consumer.events import catalog
from llm_consumer.events.content import CONTENT_MODELS
from llm_consumer.events.requests import ContentKind
from llm_consumer.events.results import ContentGenerated, ThemeAnalyzed, ValidationCompleted
from tests.bus.test_round_trip import data_for
from tests.conftest import Service

RESULT_MODELS = {catalog.CONTENT_GENERATED: ContentGenerated,
                 catalog.THEME_ANALYZED: ThemeAnalyzed,
                 catalog.VALIDATION_COMPLETED: ValidationCompleted}


@pytest.mark.slow
async def test_every_kind_on_the_embedded_model(start_service: Any) -> None:
    # One at a time: the embedded model serves one completion at a time anyway, and each
    # request's deadline then covers only its own generation.
    service: Service = await start_service(concurrency=1, request_deadline_s=600)
    kinds = list(ContentKind)
    results = await asyncio.gather(*(
        service.request(kind.value,
                        {**data_for(kind), "stream": kind == ContentKind.WORLD_NPC_DIALOGUE},
                        timeout_s=1800) for kind in kinds))
    succeeded = 0
    for kind, result in zip(kinds, results, strict=True):
        final = result.final
        assert final is not None, kind
        if final["type"] == catalog.GENERATION_FAILED:
            # The only acceptable failure: the tiny model's answer stayed unusable after repair.
            assert "after one repair attempt" in final["data"]["error"]["message"], final
            continue
        succeeded += 1
        RESULT_MODELS[final["type"]].model_validate(final["data"])
        assert final["data"]["model_used"] == "smollm2-135m-instruct"
        if final["type"] == catalog.CONTENT_GENERATED:
            CONTENT_MODELS[kind].model_validate(final["data"]["content"])
    assert succeeded >= len(kinds) - 1, f"only {succeeded} of {len(kinds)} kinds succeeded"
    streamed = results[kinds.index(ContentKind.WORLD_NPC_DIALOGUE)]
    deltas = [e["data"] for e in streamed.events if e["type"] == catalog.CONTENT_PROGRESS]
    assert deltas and [d["seq"] for d in deltas] == list(range(len(deltas)))
