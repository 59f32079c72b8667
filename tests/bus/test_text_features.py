"""Streaming, fallback, retry-after, context fitting and themes, end to end through the broker
and the real OpenAI SDK against the fake server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm_consumer.events import catalog
from llm_consumer.events.content import CharacterBackstory
from llm_consumer.prompts.builder import theme_presets
from llm_consumer.prompts.tokens import counter_for
from tests.conftest import Service
from tests.fakes.openai_server import (
    context_length_exceeded,
    model_not_found,
    rate_limited,
    reply,
    server_error,
)

SHEET = {"context": {"name": "Mira Thornvale", "race": "Half-Elf", "class": "Rogue"}}


def progress(result: Any) -> list[dict[str, Any]]:
    return [e["data"] for e in result.events if e["type"] == catalog.CONTENT_PROGRESS]


async def test_stream_publishes_ordered_deltas_before_the_result(openai_service: Any) -> None:
    service: Service = await openai_service(progress_min_chars=1, progress_interval_ms=0)
    result = await service.request("character.backstory", {**SHEET, "stream": True})
    deltas = progress(result)
    assert len(deltas) >= 2
    assert [d["seq"] for d in deltas] == list(range(len(deltas)))
    types = [e["type"] for e in result.events]
    assert types.index(catalog.CONTENT_GENERATED) > max(
        i for i, t in enumerate(types) if t == catalog.CONTENT_PROGRESS)
    streamed = json.loads("".join(d["delta"] for d in deltas))
    assert CharacterBackstory.model_validate(streamed).model_dump() == (
        result.final["data"]["content"])
    usage = result.final["data"]["token_usage"]
    assert usage["estimated"] is False and usage["total_tokens"] > 0


async def test_stream_coalesces_deltas_at_the_defaults(openai_service: Any,
                                                       fake_openai: Any) -> None:
    service: Service = await openai_service()
    fake_openai.script(reply(None, chunk_count=200))
    result = await service.request("character.backstory", {**SHEET, "stream": True})
    deltas = progress(result)
    assert 1 <= len(deltas) <= 10, "200 streamed chunks, a handful of events"
    assert [d["seq"] for d in deltas] == list(range(len(deltas)))
    streamed = json.loads("".join(d["delta"] for d in deltas))
    assert streamed == result.final["data"]["content"]
    types = [e["type"] for e in result.events]
    assert types.index(catalog.CONTENT_GENERATED) > max(
        i for i, t in enumerate(types) if t == catalog.CONTENT_PROGRESS)


async def test_stream_without_usage_is_estimated(openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service()
    fake_openai.script(reply(None, include_usage=False))
    result = await service.request("world.location", {**SHEET, "stream": True})
    assert result.final["type"] == catalog.CONTENT_GENERATED
    usage = result.final["data"]["token_usage"]
    assert usage["estimated"] is True and usage["completion_tokens"] > 0


@pytest.mark.parametrize("failure", [server_error(500), model_not_found("gpt-5-nano"),
                                     context_length_exceeded()],
                         ids=["5xx", "model-not-found", "context-overflow"])
async def test_falls_back_to_the_next_model(openai_service: Any, fake_openai: Any,
                                            failure: Any) -> None:
    service: Service = await openai_service(openai_fallback_models=("gpt-4.1-mini",))
    fake_openai.script(failure)
    result = await service.request("campaign.plot", SHEET)
    data = result.final["data"]
    assert result.final["type"] == catalog.CONTENT_GENERATED
    assert data["model_used"] == "gpt-4.1-mini" and data["fallback_used"] is True
    assert [r.body["model"] for r in fake_openai.chat_requests] == ["gpt-5-nano",
                                                                    "gpt-4.1-mini"]


async def test_broken_stream_restarts_on_the_fallback_and_says_so(openai_service: Any,
                                                                  fake_openai: Any) -> None:
    service: Service = await openai_service(openai_fallback_models=("gpt-4.1-mini",),
                                            progress_min_chars=1, progress_interval_ms=0)
    fake_openai.script(reply(None, break_after_chunks=2, chunk_count=6))
    result = await service.request("character.combat", {**SHEET, "stream": True})
    deltas = progress(result)
    resets = [i for i, d in enumerate(deltas) if d["reset"]]
    assert len(resets) == 1 and resets[0] > 0, "some text came, then the reset"
    assert "restarting on gpt-4.1-mini" in deltas[resets[0]]["notice"]
    assert [d["seq"] for d in deltas] == list(range(len(deltas)))
    after = "".join(d["delta"] for d in deltas[resets[0] + 1:])
    assert json.loads(after)
    assert result.final["data"]["fallback_used"] is True


async def test_long_retry_after_goes_through_the_delay_queue(openai_service: Any,
                                                             fake_openai: Any) -> None:
    service: Service = await openai_service()
    fake_openai.script(rate_limited(headers={"retry-after": "7"}))
    result = await service.request("campaign.quest", SHEET, timeout_s=60)
    assert result.final["type"] == catalog.CONTENT_GENERATED
    first, second = fake_openai.chat_requests
    assert second.received_at - first.received_at >= 7, "retry-after was honoured"
    states = [e["data"]["state"] for e in result.events if e["type"] == catalog.JOB_STATUS]
    assert "deferred" in states


async def test_200k_character_context_gets_a_normal_result(openai_service: Any,
                                                           fake_openai: Any) -> None:
    service: Service = await openai_service(max_message_bytes=2_000_000)
    notes = ("The party met a hooded stranger in the Yawning Portal who spoke of a vault "
             "beneath the city. ") * 2200
    assert len(notes) > 200_000
    context = {**SHEET["context"], "session_notes": notes}
    result = await service.request("character.backstory", {"context": context})
    assert result.final["type"] == catalog.CONTENT_GENERATED
    [call] = fake_openai.chat_requests
    counter = counter_for("gpt-5-nano")
    sent = sum(counter.count(m["content"]) for m in call.body["messages"])
    assert sent + call.body["max_completion_tokens"] <= 8192
    assert "Mira Thornvale" in call.body["messages"][1]["content"]


@pytest.mark.parametrize("preset", sorted(theme_presets()))
async def test_every_theme_preset_reaches_the_prompt(openai_service: Any, fake_openai: Any,
                                                     preset: str) -> None:
    service: Service = await openai_service()
    result = await service.request("theme.apply", {
        "context": {"text": "The knight rode into town."}, "theme": {"preset": preset}})
    assert result.final["type"] == catalog.CONTENT_GENERATED
    system, user = (m["content"] for m in fake_openai.chat_requests[0].body["messages"])
    # The theme is quoted data in the user message; the system message is the service's own.
    assert theme_presets()[preset]["genre"] in user.split("<theme>", 1)[1]
    assert theme_presets()[preset]["genre"] not in system


async def test_custom_theme_fields_merge_over_the_preset(openai_service: Any,
                                                         fake_openai: Any) -> None:
    service: Service = await openai_service()
    await service.request("world.location", {**SHEET, "theme": {
        "preset": "nautical", "tone": "eerie and becalmed"}})
    theme = fake_openai.chat_requests[0].body["messages"][1]["content"].split("<theme>", 1)[1]
    assert "eerie and becalmed" in theme and "nautical adventure" in theme
    assert "salt-sprayed" not in theme


async def test_unknown_theme_preset_is_a_clear_failure(openai_service: Any) -> None:
    service: Service = await openai_service()
    result = await service.request("world.location", {**SHEET, "theme": {"preset": "cyberpunk"}})
    error = result.final["data"]["error"]
    assert error["code"] == "invalid_request" and "cyberpunk" in error["message"]
    assert "high-fantasy" in error["message"], "the known presets are listed"
