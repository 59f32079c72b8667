"""Requests through the real broker, Redis and OpenAI SDK (against the fake server)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from llm_consumer.events import catalog
from llm_consumer.events.content import CONTENT_MODELS
from llm_consumer.events.requests import STRUCTURED_KINDS, ContentKind, ImageKind
from llm_consumer.events.results import ContentGenerated, ThemeAnalyzed, ValidationCompleted
from tests.conftest import Service
from tests.fakes.openai_server import hang, insufficient_quota, reply, server_error
from tests.hub import dead_letters, tap

CONTEXTS: dict[ContentKind, dict[str, Any]] = {
    ContentKind.THEME_APPLY: {"text": "The knight rode into town."},
    ContentKind.THEME_ANALYZE: {"content": "A grim keep.", "target_theme": "gothic-horror",
                                "elements": ["tone", "mood"]},
    ContentKind.CONTENT_VALIDATE: {"content": {"name": "Mira", "class": "Rogue", "level": 3}},
}
RESULT_MODELS = {catalog.CONTENT_GENERATED: ContentGenerated,
                 catalog.THEME_ANALYZED: ThemeAnalyzed,
                 catalog.VALIDATION_COMPLETED: ValidationCompleted}


def data_for(kind: ContentKind) -> dict[str, Any]:
    if kind == ContentKind.CHAT_COMPLETION:
        return {"messages": [{"role": "system", "content": "You are Mira, a wry half-elf rogue."},
                             {"role": "user", "content": "Mira, what do you see in the keep?"}]}
    return {"context": CONTEXTS.get(kind, {"name": "Mira Thornvale", "class": "Rogue"}),
            "theme": {"preset": "dark-fantasy"}}


@pytest.mark.parametrize("kind", sorted(STRUCTURED_KINDS), ids=lambda k: k.value)
async def test_every_content_kind_round_trips(openai_service: Any, fake_openai: Any,
                                              kind: ContentKind) -> None:
    service: Service = await openai_service()
    result = await service.request(kind.value, data_for(kind))
    final = result.final
    assert final is not None
    expected = {ContentKind.THEME_ANALYZE: catalog.THEME_ANALYZED,
                ContentKind.CONTENT_VALIDATE: catalog.VALIDATION_COMPLETED}.get(
                    kind, catalog.CONTENT_GENERATED)
    assert final["type"] == expected, final
    RESULT_MODELS[expected].model_validate(final["data"])
    assert final["source"] == "/llm-service"
    assert final["causationid"] == result.request["id"]
    assert final["correlationid"] == result.request["id"]
    if expected == catalog.CONTENT_GENERATED:
        CONTENT_MODELS[kind].model_validate(final["data"]["content"])
        assert final["data"]["text"]
        assert final["data"]["model_used"] == "gpt-5-nano"
    [call] = fake_openai.chat_requests
    body = call.body
    assert body["response_format"]["json_schema"]["name"] == CONTENT_MODELS[kind].__name__
    assert "dark fantasy" in body["messages"][1]["content"].split("<theme>", 1)[1], (
        "the theme reaches the prompt, as quoted data in the user message")
    states = [e["data"]["state"] for e in result.events if e["type"] == catalog.JOB_STATUS]
    assert states == ["running", "completed"]


async def test_result_event_carries_contract_properties(openai_service: Any) -> None:
    service: Service = await openai_service()
    async with tap(service.settings, catalog.CONTENT_GENERATED) as hub:
        result = await service.request("character.backstory", data_for(
            ContentKind.CHARACTER_BACKSTORY))
        [event] = await hub.wait_for(catalog.CONTENT_GENERATED, result.request["id"])
    assert event == result.final, "the hub copy and the reply_to copy are the same event"
    assert event["specversion"] == "1.0" and event["time"]
    assert event["data"]["token_usage"]["total_tokens"] > 0


async def test_duplicate_event_id_is_not_generated_twice(openai_service: Any,
                                                         fake_openai: Any) -> None:
    service: Service = await openai_service()
    request_id = str(uuid.uuid4())
    first = await service.request("world.location", data_for(ContentKind.WORLD_LOCATION),
                                  request_id=request_id)
    second = await service.request("world.location", data_for(ContentKind.WORLD_LOCATION),
                                   request_id=request_id)
    assert len(fake_openai.chat_requests) == 1, "the provider was paid once"
    assert first.final is not None and second.final is not None
    assert second.final["id"] == first.final["id"], "the stored result is re-published"
    assert second.final["data"] == first.final["data"]


@pytest.mark.parametrize("kind", list(ImageKind), ids=lambda k: k.value)
async def test_image_kinds_fail_clearly_without_provider(openai_service: Any,
                                                         kind: ImageKind) -> None:
    service: Service = await openai_service()
    data: dict[str, Any] = {"prompt": "a dwarf smith"}
    if kind in (ImageKind.TRANSFORM, ImageKind.ENHANCE, ImageKind.VARIATIONS):
        data = {"source_image": {"url": "https://images.example/a.png"}}
    result = await service.request(kind.value, data)
    assert result.final is not None
    assert result.final["type"] == catalog.GENERATION_FAILED
    assert result.final["data"]["error"]["code"] == "no_provider"
    assert result.final["data"]["kind"] == kind.value


async def test_transient_failure_is_retried_through_delay_queue(openai_service: Any,
                                                                fake_openai: Any) -> None:
    service: Service = await openai_service()
    fake_openai.script(server_error(503))
    result = await service.request("campaign.quest", data_for(ContentKind.CAMPAIGN_QUEST))
    assert result.final is not None and result.final["type"] == catalog.CONTENT_GENERATED
    assert len(fake_openai.chat_requests) == 2
    states = [(e["data"]["state"], e["data"]["attempt"]) for e in result.events
              if e["type"] == catalog.JOB_STATUS]
    assert states == [("running", 0), ("deferred", 1), ("running", 1), ("completed", 1)]


async def test_quota_exhausted_is_final_and_not_retried(openai_service: Any,
                                                        fake_openai: Any) -> None:
    service: Service = await openai_service()
    fake_openai.script(insufficient_quota())
    result = await service.request("campaign.plot", data_for(ContentKind.CAMPAIGN_PLOT))
    assert result.final is not None
    assert result.final["data"]["error"] == {
        "code": "quota_exhausted", "message": result.final["data"]["error"]["message"],
        "retryable": False}
    await asyncio.sleep(1.5)
    assert len(fake_openai.chat_requests) == 1
    assert await dead_letters(service.settings, expect=1, timeout_s=0.5) == []


async def test_deadline_cancels_a_hung_provider_call(openai_service: Any,
                                                     fake_openai: Any) -> None:
    service: Service = await openai_service(request_deadline_s=1.0, max_attempts=1)
    fake_openai.script(hang(30))
    result = await service.request("world.environment", data_for(
        ContentKind.WORLD_ENVIRONMENT), timeout_s=20)
    assert result.final is not None
    assert result.final["data"]["error"]["code"] == "timeout"
    assert "1s deadline" in result.final["data"]["error"]["message"]
    [letter] = await dead_letters(service.settings, expect=1)
    assert letter.headers["x-error-code"] == "timeout"


async def test_model_answer_is_repaired_once(openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service()
    fake_openai.script(reply('{"name": "only a name"}'))
    result = await service.request("character.equipment", data_for(
        ContentKind.CHARACTER_EQUIPMENT))
    assert result.final is not None and result.final["type"] == catalog.CONTENT_GENERATED
    _first, second = fake_openai.chat_requests
    assert "previous answer was rejected" in second.body["messages"][1]["content"]
    usage = result.final["data"]["token_usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_job_cancel_stops_a_running_request(openai_service: Any, fake_openai: Any) -> None:
    from llm_consumer.client import build_request
    from tests.conftest import token
    from tests.hub import publish_raw

    service: Service = await openai_service()
    fake_openai.script(hang(30))
    request = build_request("campaign.events", data_for(ContentKind.CAMPAIGN_EVENTS))
    async with tap(service.settings) as hub:
        sending = asyncio.create_task(service.send(request, auth=token(), timeout_s=20))
        await hub.wait_for(catalog.JOB_STATUS, request["id"])  # running
        cancel = build_request("x", {})
        cancel.update(type="job.cancel", data={"request_id": request["id"]})
        import orjson
        await publish_raw(service.settings, orjson.dumps(cancel), routing_key="job.cancel",
                          headers={"authorization": f"Bearer {token('llm:admin')}"})
        result = await sending
    assert result.final is not None
    assert result.final["data"]["error"]["code"] == "cancelled"
    states = [e["data"]["state"] for e in result.events if e["type"] == catalog.JOB_STATUS]
    assert states[-1] == "cancelled"
