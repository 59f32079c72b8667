"""An image request's trace: the provider's HTTP call carries it (OpenAI and GetImg alike), and
the request's spans include the provider call and the storage of the images."""

from __future__ import annotations

from typing import Any

import pytest

from llm_consumer.client import build_request
from llm_consumer.events import catalog
from tests.bus.test_tracing import Recorder, spans, trace_id_of, traceparent
from tests.conftest import Service, token
from tests.fakes.images_server import Api, FakeImages

__all__ = ["spans"]  # the fixture, shared with the text trace tests


@pytest.mark.parametrize("provider", ["openai", "getimg"])
async def test_an_image_request_traced_to_the_provider_and_the_store(
        image_service: Any, fake_images: FakeImages, spans: Recorder, provider: Api) -> None:
    service: Service = await image_service()
    trace_id, parent = traceparent()
    request = build_request("portrait", {"context": {"name": "Mira", "race": "elf"},
                                         "options": {"provider": provider}})
    request["traceparent"] = parent
    result = await service.send(request, auth=token("llm:image"))
    assert result.final is not None and result.final["type"] == catalog.IMAGE_GENERATED, (
        result.final)
    assert trace_id_of(result.final["traceparent"]) == trace_id

    [call] = fake_images.of(provider)
    assert trace_id_of(call.headers["traceparent"]) == trace_id

    ours = [s for s in spans.spans if s.context.trace_id == int(trace_id, 16)]
    names = {span.name for span in ours}
    assert {"llm.admission", "llm.provider.call", "llm.storage.put", "llm.publish"} <= names
    [stored] = [s for s in ours if s.name == "llm.storage.put"]
    assert stored.attributes is not None and stored.attributes["images"] == 1
    assert int(str(stored.attributes["bytes"])) == result.final["data"]["images"][0]["bytes"]
