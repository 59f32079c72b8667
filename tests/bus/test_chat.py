"""`chat.completion` over RabbitMQ against the fake OpenAI server: the history reaches the
provider after the service's rules, the per-request parameters with it; free-text and schema
answers; fitting to the window; the cache; and the requests that are refused."""

from __future__ import annotations

import json
from typing import Any

from llm_consumer.events import catalog
from llm_consumer.events.content import ChatAnswer
from llm_consumer.events.results import ContentGenerated
from llm_consumer.prompts.chat import CHAT_RULES
from tests.conftest import Service
from tests.fakes.openai_server import DEFAULT_TEXT, reply

MODEL = "gpt-4.1-mini"  # takes temperature and top_p (gpt-5-nano refuses both)
PERSONA = {"role": "system", "content": "You are Brother Aldric, a weary priest. Be brief."}
HISTORY = [PERSONA,
           {"role": "user", "content": "Is this holy symbol yours?"},
           {"role": "assistant", "content": "No. It belonged to the order that burned here."},
           {"role": "user", "content": "Who burned it?"}]
MOOD = {"type": "object", "properties": {
    "mood": {"type": "string", "maxLength": 40},
    "coins": {"type": "integer", "minimum": 0, "maximum": 100}},
    "required": ["mood", "coins"]}


def generated(result: Any) -> dict[str, Any]:
    final = result.final
    assert final is not None and final["type"] == catalog.CONTENT_GENERATED, final
    ContentGenerated.model_validate(final["data"])
    assert final["data"]["kind"] == "chat.completion"
    ChatAnswer.model_validate(final["data"]["content"])
    data: dict[str, Any] = final["data"]
    return data


def failure(result: Any) -> dict[str, Any]:
    final = result.final
    assert final is not None and final["type"] == catalog.GENERATION_FAILED, final
    error: dict[str, Any] = final["data"]["error"]
    return error


async def test_a_history_and_its_parameters_reach_the_provider(openai_service: Any,
                                                               fake_openai: Any) -> None:
    service: Service = await openai_service(openai_model=MODEL)
    result = await service.request("chat.completion", {
        "messages": HISTORY,
        "model": {"temperature": 0.4, "top_p": 0.9, "max_tokens": 200, "stop": ["\nPlayer:"]}})

    data = generated(result)
    assert data["content"] == {"role": "assistant", "content": DEFAULT_TEXT}
    assert data["text"] == DEFAULT_TEXT and data["model_used"] == MODEL
    assert data["token_usage"]["estimated"] is False
    [call] = fake_openai.chat_requests
    body = call.body
    # The service's rules first, then the caller's persona and turns, as sent.
    assert body["messages"][0] == {"role": "system", "content": CHAT_RULES}
    assert body["messages"][1:] == HISTORY
    assert (body["temperature"], body["top_p"], body["stop"]) == (0.4, 0.9, ["\nPlayer:"])
    assert body["max_completion_tokens"] == 200
    assert "response_format" not in body, "a free-text answer asks for no format"


async def test_a_streamed_chat_sends_its_text_as_progress(openai_service: Any,
                                                         fake_openai: Any) -> None:
    fake_openai.script(reply("The Ashen Company did, on the queen's orders."))
    service: Service = await openai_service(openai_model=MODEL)
    result = await service.request("chat.completion", {"messages": HISTORY, "stream": True})

    data = generated(result)
    assert data["text"] == "The Ashen Company did, on the queen's orders."
    deltas = [e["data"] for e in result.events if e["type"] == catalog.CONTENT_PROGRESS]
    assert deltas and [d["seq"] for d in deltas] == list(range(len(deltas)))
    assert "".join(d["delta"] for d in deltas) == data["text"]
    assert fake_openai.chat_requests[0].body["stream"] is True


async def test_a_schema_answer_is_parsed_and_repaired_once(openai_service: Any,
                                                           fake_openai: Any) -> None:
    fake_openai.script(reply('{"mood": "wary"}'))  # misses `coins`: one repair call
    service: Service = await openai_service(openai_model=MODEL)
    result = await service.request("chat.completion", {"messages": HISTORY,
                                                       "response_schema": MOOD})

    data = generated(result)
    parsed = data["content"]["parsed"]
    assert set(parsed) == {"mood", "coins"} and json.loads(data["text"]) == parsed
    first, repair = fake_openai.chat_requests
    assert first.body["response_format"]["type"] == "json_schema"
    assert first.body["response_format"]["json_schema"]["strict"] is True
    assert "coins" in repair.body["messages"][-1]["content"], "the repair says what was wrong"


async def test_identical_histories_share_one_answer(openai_service: Any,
                                                    fake_openai: Any) -> None:
    service: Service = await openai_service(openai_model=MODEL)
    first = await service.request("chat.completion", {"messages": HISTORY})
    again = await service.request("chat.completion", {"messages": HISTORY})
    other = await service.request("chat.completion", {"messages": [*HISTORY[:-1], {
        "role": "user", "content": "Who burned it, really?"}]})

    assert [generated(r)["cached"] for r in (first, again, other)] == [False, True, False]
    assert len(fake_openai.chat_requests) == 2


async def test_the_oldest_turns_go_first_when_the_window_is_small(openai_service: Any,
                                                                  fake_openai: Any) -> None:
    turns = [{"role": "user" if i % 2 == 0 else "assistant",
              "content": f"turn {i}: " + "the rain falls on the ruined chapel " * 12}
             for i in range(30)]
    history = [PERSONA, *turns[:-1], {"role": "user", "content": "And now?"}]
    service: Service = await openai_service(openai_model=MODEL,
                                            model_context_windows={MODEL: 2048})
    generated(await service.request("chat.completion", {"messages": history}))

    sent = fake_openai.chat_requests[0].body["messages"]
    assert sent[0]["content"] == CHAT_RULES and sent[1] == PERSONA, "system turns are kept"
    assert sent[-1] == {"role": "user", "content": "And now?"}, "the last user turn is kept"
    kept = sent[2:-1]
    assert 0 < len(kept) < len(history) - 2
    assert kept == history[len(history) - 1 - len(kept):-1], "the newest turns are the ones kept"
    assert not sent[2]["content"].startswith("turn 0:")


async def test_a_last_turn_too_long_for_the_window_is_refused(openai_service: Any,
                                                              fake_openai: Any) -> None:
    service: Service = await openai_service(openai_model=MODEL,
                                            model_context_windows={MODEL: 1024})
    result = await service.request("chat.completion", {"messages": [
        {"role": "user", "content": "a long tale of the keep " * 600}]})

    error = failure(result)
    assert error["code"] == "context_length_exceeded" and not error["retryable"]
    assert "the last user turn" in error["message"]
    assert fake_openai.chat_requests == []


async def test_malformed_chat_requests_are_invalid(openai_service: Any,
                                                   fake_openai: Any) -> None:
    service: Service = await openai_service(openai_model=MODEL)
    cases = {
        "no messages": {},
        "last turn not the user's": {"messages": HISTORY[:-1]},
        "a context on chat": {"messages": HISTORY, "context": {"name": "Mira"}},
        "a schema that is no schema": {"messages": HISTORY,
                                       "response_schema": {"type": "object", "minProperties": -1}},
        "too many stops": {"messages": HISTORY, "model": {"stop": list("abcde")}},
        "a turn over the bound": {"messages": [{"role": "user", "content": "x" * 16_001}]},
    }
    for why, data in cases.items():
        error = failure(await service.request("chat.completion", data))
        assert error["code"] == "invalid_request", (why, error)
        assert "\n" not in error["message"], why
    # A structured kind still needs its context, and takes no chat fields.
    error = failure(await service.request("world.location", {"messages": HISTORY}))
    assert error["code"] == "invalid_request" and "needs a context" in error["message"]
    assert fake_openai.chat_requests == []


async def test_a_fenced_schema_answer_is_tidied(openai_service: Any, fake_openai: Any) -> None:
    fake_openai.script(reply('Here you go:\n```json\n{"mood": "grim", "coins": 7,}\n```'))
    service: Service = await openai_service(openai_model=MODEL)
    data = generated(await service.request("chat.completion", {"messages": HISTORY,
                                                               "response_schema": MOOD}))
    assert data["content"]["parsed"] == {"mood": "grim", "coins": 7}
    assert json.loads(data["text"]) == {"mood": "grim", "coins": 7}
    assert len(fake_openai.chat_requests) == 1, "tidied, not repaired"


async def test_an_empty_answer_is_repaired_once_then_fails_clearly(openai_service: Any,
                                                                   fake_openai: Any) -> None:
    fake_openai.script(reply(""), reply("  "))
    service: Service = await openai_service(openai_model=MODEL)
    error = failure(await service.request("chat.completion", {"messages": HISTORY}))
    assert error["code"] == "internal" and not error["retryable"]
    assert error["message"] == ("the model's answer was unusable after one repair attempt: "
                                "the answer was empty")
    assert len(fake_openai.chat_requests) == 2
