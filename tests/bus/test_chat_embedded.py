"""chat.completion on the embedded model (SmolLM2 on llama.cpp, in process): free text streamed
with every sampling parameter, and a response_schema answer; and the embedded model answering
for a remote provider whose every circuit is open (BREAKER_OPEN_FALLBACK=local)."""

from __future__ import annotations

from typing import Any

import pytest

from llm_consumer.events import catalog
from llm_consumer.events.results import ContentGenerated
from llm_consumer.providers.local import MODEL_NAME
from tests.conftest import Service
from tests.fakes.openai_server import server_error

HISTORY = [{"role": "system", "content": "You are Mira, a wry half-elf rogue."},
           {"role": "user", "content": "Mira, what do you see in the old keep?"}]
SCHEMA = {"type": "object", "properties": {
    "answer": {"type": "string", "maxLength": 200},
    "danger": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["answer", "danger"]}


def generated(result: Any) -> dict[str, Any]:
    final = result.final
    assert final is not None and final["type"] == catalog.CONTENT_GENERATED, final
    ContentGenerated.model_validate(final["data"])
    data: dict[str, Any] = final["data"]
    assert data["kind"] == "chat.completion" and data["text"].strip()
    return data


@pytest.mark.slow
async def test_chat_on_the_embedded_model(start_service: Any) -> None:
    service: Service = await start_service(concurrency=1, request_deadline_s=600)
    free = generated(await service.request("chat.completion", {
        "messages": HISTORY, "stream": True,
        "model": {"temperature": 0.3, "top_p": 0.9, "max_tokens": 80, "stop": ["\n\n\n"]}},
        timeout_s=900))
    shaped = await service.request("chat.completion", {
        "messages": HISTORY, "response_schema": SCHEMA, "model": {"max_tokens": 200}},
        timeout_s=900)

    assert free["model_used"] == MODEL_NAME and free["fallback_used"] is False
    assert free["token_usage"]["estimated"] is False, "counted with the model's own vocabulary"
    assert free["token_usage"]["completion_tokens"] <= 80
    data = generated(shaped)
    assert set(data["content"]["parsed"]) == {"answer", "danger"}
    assert 1 <= data["content"]["parsed"]["danger"] <= 5


@pytest.mark.slow
async def test_the_embedded_model_answers_while_every_remote_circuit_is_open(
        openai_service: Any, fake_openai: Any) -> None:
    fake_openai.responder = lambda body: server_error(503)
    service: Service = await openai_service(breaker_failure_threshold=1,
                                            breaker_cooldown_s=600,
                                            breaker_open_fallback="local",
                                            request_deadline_s=600)
    first = generated(await service.request("chat.completion", {
        "messages": HISTORY, "model": {"max_tokens": 60}}, timeout_s=900))
    second = generated(await service.request("chat.completion", {
        "messages": [*HISTORY[:1], {"role": "user", "content": "And the gate?"}],
        "model": {"max_tokens": 60}}, timeout_s=900))

    for data in (first, second):
        assert data["model_used"] == MODEL_NAME and data["fallback_used"] is True
    assert len(fake_openai.chat_requests) == 1, "the open circuit kept the second off the wire"
