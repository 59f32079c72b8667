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


CHAT = [{"role": "system", "content": "You are a terse dwarven smith."},
        {"role": "user", "content": "How much for the axe?"}]


async def test_chat_parameters_reach_the_provider(openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service(openai_model="gpt-4.1-mini")
    result = await service.request("chat.completion", {"messages": CHAT, "model": {
        "temperature": 0.2, "top_p": 0.5, "max_tokens": 77, "stop": ["END", "\n\n"]}})
    assert result.final["type"] == catalog.CONTENT_GENERATED, result.final
    [call] = fake_openai.chat_requests
    assert {k: call.body.get(k) for k in ("temperature", "top_p", "max_completion_tokens",
                                          "stop")} == {
        "temperature": 0.2, "top_p": 0.5, "max_completion_tokens": 77, "stop": ["END", "\n\n"]}


async def test_sampling_parameters_a_model_refuses_are_dropped_in_turn(
        openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service()  # gpt-5-nano: temperature, top_p, stop refused
    with capture_logs() as logs:
        result = await service.request("chat.completion", {"messages": CHAT, "model": {
            "temperature": 0.2, "top_p": 0.5, "stop": "END"}})
    assert result.final["type"] == catalog.CONTENT_GENERATED, result.final
    sent = [sorted(k for k in ("temperature", "top_p", "stop") if k in call.body)
            for call in fake_openai.chat_requests]
    assert sent == [["stop", "temperature", "top_p"], ["stop", "top_p"], ["stop"], []]
    dropped = [n["params"] for n in logs if n["event"] == "provider.parameter_dropped"]
    assert dropped == [["temperature"], ["top_p"], ["stop"]]
