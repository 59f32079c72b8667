"""Capability negotiation against real HTTP fakes of OpenAI and of servers in the wild:
structured-output mode, token-limit parameter, refused parameters, scrubbed messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from llm_consumer.errors import PermanentFailure
from llm_consumer.events import content
from llm_consumer.providers import capabilities
from llm_consumer.providers.base import TextJob
from llm_consumer.providers.capabilities import (
    Capabilities,
    CapabilityBook,
    Refusal,
    StructuredSetting,
    TokenSetting,
    initial,
)
from llm_consumer.providers.local import MAX_GRAMMAR_STRING
from llm_consumer.providers.openai_errors import scrub
from llm_consumer.providers.openai_text import OpenAITextProvider
from llm_consumer.providers.response_format import strict_schema
from tests.fakes.openai_server import (
    ErrorReply,
    FakeOpenAI,
    Scripted,
    llama_cpp_validation_error,
    openai_refusal,
    reply,
    sample_for_schema,
)

BACKSTORY = content.CharacterBackstory
SAMPLE = json.dumps(sample_for_schema(BACKSTORY.model_json_schema()))
ProviderFactory = Callable[..., OpenAITextProvider]


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def make_provider(server: FakeOpenAI) -> AsyncIterator[ProviderFactory]:
    made: list[OpenAITextProvider] = []

    def make(model: str = "smollm2", structured: StructuredSetting = "auto",
             token_param: TokenSetting = "auto") -> OpenAITextProvider:
        made.append(OpenAITextProvider(
            server.api_key, base_url=server.base_url, model=model, timeout_s=5.0,
            structured_output=structured, token_limit_param=token_param))
        return made[-1]

    yield make
    for provider in made:
        await provider.aclose()


def job(**overrides: Any) -> TextJob:
    fields: dict[str, Any] = {
        "system": "You write D&D backstories as JSON.",
        "user": "A dwarf cleric who lost her clan.",
        "schema_name": "CharacterBackstory",
        "schema": BACKSTORY.model_json_schema(),
        "max_tokens": 300,
    }
    fields.update(overrides)
    return TextJob(**fields)


def like_llama_cpp(body: dict[str, Any]) -> Scripted | None:
    """llama-cpp-python 0.3.16: json_schema is a validation 500; a json_object may carry a
    schema; the answer comes from it."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return llama_cpp_validation_error()
    return reply(SAMPLE)


def formats(server: FakeOpenAI) -> list[str]:
    types = []
    for request in server.chat_requests:
        fmt = request.body.get("response_format") or {"type": "text"}
        types.append(fmt["type"] + ("+schema" if "schema" in fmt else ""))
    return types


# ----------------------------------------------------------------------------- structured output


async def test_llama_cpp_server_costs_one_failed_call_then_json_object_with_schema(
    server: FakeOpenAI, make_provider: ProviderFactory
) -> None:
    server.responder = like_llama_cpp
    provider = make_provider()

    first = await provider.complete(job())
    second = await provider.complete(job())

    BACKSTORY.model_validate_json(first.text)
    BACKSTORY.model_validate_json(second.text)
    assert formats(server) == ["json_schema", "json_object+schema", "json_object+schema"]
    assert provider.capabilities.failed_calls == 1
    body = server.chat_requests[1].body
    assert body["max_tokens"] == 300 and "max_completion_tokens" not in body
    lengths = [s["maxLength"] for s in body["response_format"]["schema"]["properties"].values()
               if s.get("type") == "string"]
    assert lengths and max(lengths) <= MAX_GRAMMAR_STRING, "a grammar-safe copy of the schema"
    assert "$defs" not in json.dumps(body["response_format"]["schema"])


async def test_concurrent_first_calls_pay_the_detection_once(
    server: FakeOpenAI, make_provider: ProviderFactory
) -> None:
    server.responder = like_llama_cpp
    provider = make_provider()

    results = await asyncio.gather(*(provider.complete(job()) for _ in range(6)))

    assert len(results) == 6
    assert formats(server).count("json_schema") == 1
    assert len(server.chat_requests) == 7
    assert provider.capabilities.failed_calls == 1


async def test_openai_model_without_structured_outputs_gets_json_object(
    server: FakeOpenAI, make_provider: ProviderFactory
) -> None:
    server.script(reply(SAMPLE))  # served to the first accepted call
    provider = make_provider("gpt-3.5-turbo")

    result = await provider.complete(job())

    BACKSTORY.model_validate_json(result.text)
    assert formats(server) == ["json_schema", "json_object"]
    system = server.chat_requests[1].body["messages"][0]["content"]
    assert "JSON schema" in system and '"personality_traits"' in system
    assert server.chat_requests[1].body["max_completion_tokens"] == 300


async def test_strict_schema_refused_steps_down_to_non_strict(
    server: FakeOpenAI, make_provider: ProviderFactory
) -> None:
    def no_strict(body: dict[str, Any]) -> Scripted | None:
        spec = (body.get("response_format") or {}).get("json_schema") or {}
        if spec.get("strict"):
            return ErrorReply(400, "Invalid schema for response_format 'CharacterBackstory': "
                              "'maxItems' is not permitted.", "invalid_request_error",
                              param="response_format")
        return None

    server.responder = no_strict
    provider = make_provider("gpt-4.1-mini")

    await provider.complete(job())

    specs = [r.body["response_format"]["json_schema"] for r in server.chat_requests]
    assert [s["strict"] for s in specs] == [True, False]
    assert specs[1]["schema"] == BACKSTORY.model_json_schema()


@pytest.mark.parametrize(("setting", "expected"), [
    ("json_object_schema", "json_object+schema"), ("json_object", "json_object"),
    ("text", "text")])
async def test_a_pinned_mode_is_sent_as_is(server: FakeOpenAI, make_provider: ProviderFactory,
                                           setting: StructuredSetting, expected: str) -> None:
    server.script(reply(SAMPLE))
    provider = make_provider("some-model", structured=setting)

    await provider.complete(job())

    assert formats(server) == [expected]
    system = server.chat_requests[0].body["messages"][0]["content"]
    assert "JSON object" in system
    assert ('"personality_traits"' in system) is (setting != "json_object_schema")


async def test_a_pinned_mode_refused_is_a_permanent_clean_invalid_request(
    server: FakeOpenAI, make_provider: ProviderFactory
) -> None:
    server.responder = like_llama_cpp
    provider = make_provider(structured="json_schema")

    with pytest.raises(PermanentFailure) as caught:
        await provider.complete(job())

    assert caught.value.code == "invalid_request" and not caught.value.retryable
    assert len(server.chat_requests) == 1
    message = caught.value.message
    assert message == ("openai 500: request validation failed: body.response_format.type: "
                       "Input should be 'text' or 'json_object'")
    assert "/srv" not in message and "line" not in message and "app.py" not in message


# ----------------------------------------------------------------------------- other parameters


async def test_refused_temperature_is_dropped_with_a_notice_and_remembered(
    server: FakeOpenAI, make_provider: ProviderFactory
) -> None:
    provider = make_provider("gpt-5-mini")

    with capture_logs() as logs:
        first = await provider.complete(job(temperature=0.3))
        await provider.complete(job(temperature=0.3))

    assert first.text
    sent = [r.body.get("temperature") for r in server.chat_requests]
    assert sent == [0.3, None, None], "refused once, then never sent again"
    notices = [e for e in logs if e["event"] == "provider.parameter_dropped"]
    assert len(notices) == 1 and notices[0]["params"] == ["temperature"]
    assert notices[0]["log_level"] == "warning"


async def test_reasoning_models_get_max_completion_tokens(
    server: FakeOpenAI, make_provider: ProviderFactory
) -> None:
    provider = make_provider("gpt-5-nano")
    await provider.complete(job())
    assert server.chat_requests[0].body["max_completion_tokens"] == 300
    assert "max_tokens" not in server.chat_requests[0].body


async def test_max_tokens_refused_switches_the_parameter(
    server: FakeOpenAI, make_provider: ProviderFactory
) -> None:
    # A proxy serving an OpenAI reasoning model under another name gets max_tokens first.
    proxied = make_provider("acme/reasoner-large")
    server.responder = lambda body: (
        ErrorReply(400, "Unsupported parameter: 'max_tokens' is not supported with this "
                   "model. Use 'max_completion_tokens' instead.", "invalid_request_error",
                   code="unsupported_parameter", param="max_tokens")
        if "max_tokens" in body else None)

    await proxied.complete(job())

    assert [("max_tokens" in r.body, "max_completion_tokens" in r.body)
            for r in server.chat_requests] == [(True, False), (False, True)]


async def test_pinned_token_parameter_refused_is_not_retried(
    server: FakeOpenAI, make_provider: ProviderFactory
) -> None:
    provider = make_provider("gpt-5-nano", token_param="max_tokens")
    with pytest.raises(PermanentFailure) as caught:
        await provider.complete(job())
    assert caught.value.code == "invalid_request"
    assert "'max_tokens' is not supported" in caught.value.message
    assert len(server.chat_requests) == 1


async def test_an_ignored_limit_switches_to_max_tokens(
    server: FakeOpenAI, make_provider: ProviderFactory
) -> None:
    usage = {"prompt_tokens": 20, "completion_tokens": 900}
    server.script(reply(SAMPLE, usage=usage))
    provider = make_provider("gpt-4o-mini")

    await provider.complete(job())
    await provider.complete(job())

    assert [list(k for k in r.body if k.startswith("max_")) for r in server.chat_requests] == [
        ["max_completion_tokens"], ["max_tokens"]]


async def test_refused_stream_options_are_dropped_and_usage_counted(
    server: FakeOpenAI, make_provider: ProviderFactory
) -> None:
    server.responder = lambda body: (
        ErrorReply(400, "Unrecognized request argument supplied: stream_options",
                   "invalid_request_error") if "stream_options" in body else reply(SAMPLE))

    class Sink:
        async def delta(self, text: str) -> None:
            pass

        async def restart(self, reason: str) -> None:
            raise AssertionError("nothing was streamed before the refusal")

    result = await make_provider("llama3.2").complete(job(), Sink())

    assert [("stream_options" in r.body) for r in server.chat_requests] == [True, False]
    assert result.usage.estimated is True and result.usage.completion_tokens > 0


async def test_an_unrelated_bad_request_is_not_retried(
    server: FakeOpenAI, make_provider: ProviderFactory
) -> None:
    server.script(ErrorReply(400, "Invalid 'messages[1].content': string too long.",
                             "invalid_request_error", param="messages[1].content"))
    with pytest.raises(PermanentFailure) as caught:
        await make_provider().complete(job(temperature=0.5))
    assert caught.value.code == "invalid_request"
    assert len(server.chat_requests) == 1


# ----------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("model", "token_param", "strict"), [
    ("gpt-5-nano", "max_completion_tokens", True),
    ("gpt-4o-mini", "max_completion_tokens", True),
    ("gpt-3.5-turbo", "max_completion_tokens", False),
    ("openai/gpt-oss-20b", "max_completion_tokens", True),
    ("smollm2", "max_tokens", False),
    ("meta-llama/Llama-3.1-8B-Instruct", "max_tokens", False),
    ("llama3.2:3b", "max_tokens", False),
])
def test_initial_guess(model: str, token_param: str, strict: bool) -> None:
    caps = initial(model)
    assert (caps.structured, caps.token_param, caps.strict) == ("json_schema", token_param,
                                                                strict)


@pytest.mark.parametrize(("sent", "message", "expected"), [
    ("json_schema", "body.response_format.type: Input should be 'text' or 'json_object'",
     "json_object_schema"),
    ("json_schema", "body.response_format.type: Input should be 'text'", "text"),
    ("json_schema", "'response_format' of type 'json_schema' is not supported", "json_object"),
    ("json_object_schema", "response_format: extra key 'schema' not permitted", "json_object"),
    ("json_object", "response_format is not supported", "text"),
    ("text", "response_format is not supported", None),
    ("json_schema", "Invalid 'messages': empty", None),
])
def test_structured_ladder(sent: str, message: str, expected: str | None) -> None:
    book = CapabilityBook("http://x")
    caps = Capabilities(structured=sent)  # type: ignore[arg-type]
    fields = frozenset({"model", "messages"} | ({"response_format"} if sent != "text"
                                                else set()))
    adapted = book.adapt("m", caps, Refusal(400, message), fields)
    assert (adapted.structured if adapted else None) == expected


@pytest.mark.parametrize(("raw", "clean"), [
    ('Traceback (most recent call last):\n  File "/usr/lib/python3/x.py", line 3, in f\n'
     "ValueError: bad grammar", "ValueError: bad grammar"),
    ("failed at /srv/app/server.py:123 while loading /opt/models/m.gguf",
     "failed at <path> while loading <path>"),
    ('boom\n  File "C:\\\\app\\\\main.py", line 9, in run', "boom"),
    ("see https://platform.openai.com/docs/guides/structured-outputs",
     "see https://platform.openai.com/docs/guides/structured-outputs"),
    ("x" * 500, "x" * 299 + "…"),
    ("", "no message"),
])
def test_scrub(raw: str, clean: str) -> None:
    assert scrub(raw) == clean


async def test_once_proven_waiting_calls_run_side_by_side(
    server: FakeOpenAI, make_provider: ProviderFactory
) -> None:
    # The first call proves the phrasing; the calls that queued behind it then run at once
    # rather than one at a time.
    server.script(*[reply(SAMPLE, delay_s=0.3)] * 6)
    provider = make_provider()

    started = asyncio.get_running_loop().time()
    await asyncio.gather(*(provider.complete(job()) for _ in range(6)))
    elapsed = asyncio.get_running_loop().time() - started

    assert len(server.chat_requests) == 6
    assert elapsed < 1.2, f"{elapsed:.2f} s: the calls after the first went one at a time"


async def test_calls_behind_a_slow_probe_do_not_wait_for_its_answer(
    server: FakeOpenAI, make_provider: ProviderFactory,
) -> None:
    # A probe the server has not refused within PROBE_WAIT_S was taken: the calls queued
    # behind it go out then, not when its (slow, LLM-paced) answer arrives.
    answer_s = capabilities.PROBE_WAIT_S + 0.5
    server.script(reply(SAMPLE, delay_s=answer_s), *[reply(SAMPLE)] * 5)
    provider = make_provider()

    await asyncio.gather(*(provider.complete(job()) for _ in range(6)))

    first, *others = sorted(r.received_at for r in server.chat_requests)
    assert len(others) == 5
    assert all(at < first + answer_s for at in others), "the calls waited for the probe's answer"
    assert provider.capabilities.failed_calls == 0


@pytest.mark.parametrize("kind", list(content.CONTENT_MODELS), ids=lambda k: k.value)
def test_every_kind_has_a_strict_schema_openai_accepts(kind: Any) -> None:
    model = content.CONTENT_MODELS[kind]
    strict = strict_schema(model.model_json_schema())
    body = {"model": "gpt-5-nano", "messages": [], "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": strict, "strict": True}}}
    assert openai_refusal(body) is None
    assert "maxLength" not in json.dumps(strict)
    model.model_validate(sample_for_schema(strict))  # an answer to it is still a valid answer


async def test_a_bad_value_of_a_known_parameter_is_not_a_capability(
    server: FakeOpenAI, make_provider: ProviderFactory
) -> None:
    # Too many tokens asked is the caller's error, not a reason to try the other parameter.
    server.responder = lambda body: ErrorReply(
        400, "max_tokens is too large: 90000. This model supports at most 16384 completion "
        "tokens.", "invalid_request_error", code="invalid_value", param="max_tokens")
    with pytest.raises(PermanentFailure) as caught:
        await make_provider("llama3.2").complete(job(max_tokens=90000))
    assert caught.value.code == "invalid_request"
    assert len(server.chat_requests) == 1
