"""Per-request parameters, end to end: `model.temperature` and `model.max_tokens` in a
`content.requested` event reach the provider; a model that refuses one gets it dropped (with a
notice in the log) and the request still succeeds."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from llm_consumer.events import catalog
from tests.conftest import Service

SHEET = {"context": {"name": "Mira Thornvale", "race": "Half-Elf", "class": "Rogue"}}


async def test_temperature_and_max_tokens_reach_the_provider(openai_service: Any,
                                                             fake_openai: Any) -> None:
    service: Service = await openai_service(openai_model="gpt-4.1-mini")
    result = await service.request("character.backstory", {
        **SHEET, "model": {"temperature": 0.3, "max_tokens": 321}})
    assert result.final["type"] == catalog.CONTENT_GENERATED
    [call] = fake_openai.chat_requests
    assert call.body["model"] == "gpt-4.1-mini"
    assert call.body["temperature"] == 0.3
    assert call.body["max_completion_tokens"] == 321 and "max_tokens" not in call.body


async def test_a_refused_temperature_is_dropped_not_a_failed_request(openai_service: Any,
                                                                     fake_openai: Any) -> None:
    service: Service = await openai_service()  # gpt-5-nano: only the default temperature
    with capture_logs() as logs:
        first = await service.request("world.location", {**SHEET, "model": {"temperature": 0.3}})
        again = await service.request("world.environment", {
            **SHEET, "model": {"temperature": 0.3}, "stream": True})

    for result in (first, again):
        assert result.final["type"] == catalog.CONTENT_GENERATED, result.final
        assert result.final["data"]["model_used"] == "gpt-5-nano"
    sent = [call.body.get("temperature") for call in fake_openai.chat_requests]
    assert sent == [0.3, None, None], "refused once, dropped, and not sent again"
    notices = [e for e in logs if e["event"] == "provider.parameter_dropped"]
    assert [(n["model"], n["params"], n["log_level"]) for n in notices] == [
        ("gpt-5-nano", ["temperature"], "warning")]
    assert "Only the default (1) value is supported" in notices[0]["reason"]
