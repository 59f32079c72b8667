"""OpenAITextProvider against a real HTTP fake of the OpenAI API, through the real SDK."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from llm_consumer.errors import PermanentFailure, ServiceError, TransientFailure
from llm_consumer.events import content
from llm_consumer.prompts.tokens import MESSAGE_OVERHEAD_TOKENS, counter_for
from llm_consumer.providers.base import TextJob
from llm_consumer.providers.openai_errors import retry_after_seconds
from llm_consumer.providers.openai_text import OpenAITextProvider
from llm_consumer.providers.response_format import strict_schema
from tests.fakes.openai_server import (
    ErrorReply,
    FakeOpenAI,
    content_policy,
    context_length_exceeded,
    hang,
    insufficient_quota,
    invalid_api_key,
    invalid_request,
    model_not_found,
    rate_limited,
    reply,
    sample_for_schema,
    server_error,
)

DEFAULT_MODEL = "gpt-4o-mini"


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def provider(server: FakeOpenAI) -> AsyncIterator[OpenAITextProvider]:
    p = OpenAITextProvider(
        server.api_key, base_url=server.base_url, model=DEFAULT_MODEL, timeout_s=5.0
    )
    yield p
    await p.aclose()


@pytest.fixture
async def client(server: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    c = openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    yield c
    await c.close()


class RecordingSink:
    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.restarts: list[str] = []

    async def delta(self, text: str) -> None:
        self.deltas.append(text)

    async def restart(self, reason: str) -> None:
        self.restarts.append(reason)


def backstory_job(**overrides: Any) -> TextJob:
    fields: dict[str, Any] = {
        "system": "You write D&D backstories as JSON.",
        "user": "A dwarf cleric who lost her clan.",
        "schema_name": "character_backstory",
        "schema": content.CharacterBackstory.model_json_schema(),
    }
    fields.update(overrides)
    return TextJob(**fields)


# ----------------------------------------------------------------------------- round trip


async def test_structured_round_trip(server: FakeOpenAI, provider: OpenAITextProvider) -> None:
    usage = {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59}
    server.script(reply(usage=usage))  # content=None: the schema-derived default answer
    job = backstory_job()

    result = await provider.complete(job)

    [request] = server.chat_requests
    assert request.headers["authorization"] == f"Bearer {server.api_key}"
    assert request.body["model"] == DEFAULT_MODEL
    assert request.body["messages"] == [
        {"role": "system", "content": job.system},
        {"role": "user", "content": job.user},
    ]
    # gpt-4o-mini has structured outputs: the strict copy of the schema (all required, no
    # extra properties, length bounds as descriptions), which the fake checks as OpenAI does.
    assert request.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "character_backstory", "schema": strict_schema(job.schema),
                        "strict": True},
    }
    assert "max_completion_tokens" not in request.body
    assert "temperature" not in request.body
    assert "stream" not in request.body

    content.CharacterBackstory.model_validate(json.loads(result.text))
    assert result.model_used == DEFAULT_MODEL
    assert result.finish_reason == "stop"
    assert result.usage.model_dump() == {**usage, "estimated": False}
    assert result.fallback_used is False


async def test_job_overrides_model_and_sampling(
    server: FakeOpenAI, provider: OpenAITextProvider
) -> None:
    server.script(reply('{"ok": true}', finish_reason="length"))
    job = backstory_job(model="gpt-4.1", temperature=0.3, max_tokens=256)

    result = await provider.complete(job)

    body = server.chat_requests[0].body
    assert body["model"] == "gpt-4.1"
    assert body["temperature"] == 0.3
    assert body["max_completion_tokens"] == 256
    assert "max_tokens" not in body
    assert result.model_used == "gpt-4.1"
    assert result.text == '{"ok": true}'
    assert result.finish_reason == "length"
    assert server.calls_by_model == {"gpt-4.1": 1}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_missing_usage_is_counted_with_the_tokenizer(
    server: FakeOpenAI, provider: OpenAITextProvider, stream: bool
) -> None:
    answer = '{"text": "A bell tolls under the lake, and the drowned king listens."}'
    server.script(reply(answer, include_usage=False))
    job = backstory_job(system="You write JSON.", user="A dwarf cleric who lost her clan.")

    result = await provider.complete(job, RecordingSink() if stream else None)

    counter = counter_for(DEFAULT_MODEL)  # o200k: exact for gpt-4o-mini
    assert result.usage.estimated is True
    assert result.usage.prompt_tokens == (counter.count(job.system) + counter.count(job.user)
                                          + 2 * MESSAGE_OVERHEAD_TOKENS)
    assert result.usage.completion_tokens == counter.count(answer) == 19
    assert result.usage.total_tokens == result.usage.prompt_tokens + 19


# ----------------------------------------------------------------------------- error mapping


ERROR_CASES: list[tuple[str, ErrorReply, type[ServiceError], str]] = [
    ("429 rate limit", rate_limited(), TransientFailure, "rate_limited"),
    ("429 quota", insufficient_quota(), PermanentFailure, "quota_exhausted"),
    ("400 context", context_length_exceeded(), PermanentFailure, "context_length_exceeded"),
    ("400 policy code", content_policy(), PermanentFailure, "content_policy"),
    ("400 filter code", content_policy("content_filter"), PermanentFailure, "content_policy"),
    ("400 safety message", content_policy(None), PermanentFailure, "content_policy"),
    ("400 other", invalid_request(), PermanentFailure, "invalid_request"),
    (
        "422",
        ErrorReply(422, "Unprocessable.", "invalid_request_error"),
        PermanentFailure,
        "invalid_request",
    ),
    ("401", invalid_api_key(), PermanentFailure, "no_provider"),
    (
        "403",
        ErrorReply(403, "Country not supported.", "invalid_request_error", "unsupported_country"),
        PermanentFailure,
        "no_provider",
    ),
    ("404", model_not_found(DEFAULT_MODEL), PermanentFailure, "no_provider"),
    ("500", server_error(500), TransientFailure, "provider_unavailable"),
    ("502", server_error(502), TransientFailure, "provider_unavailable"),
    ("503", server_error(503), TransientFailure, "provider_unavailable"),
]


@pytest.mark.parametrize(
    ("scripted", "error_class", "code"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
async def test_vendor_errors_are_translated(
    server: FakeOpenAI,
    provider: OpenAITextProvider,
    scripted: ErrorReply,
    error_class: type[ServiceError],
    code: str,
) -> None:
    server.script(scripted)

    with pytest.raises(error_class) as caught:
        await provider.complete(backstory_job())

    assert caught.value.code == code
    assert caught.value.retryable is (error_class is TransientFailure)
    assert caught.value.message.startswith(
        (f"openai {scripted.status}: ", f"openai rejected the API key ({scripted.status})",
         "openai has no model"))
    assert scripted.message.split(".")[0] in caught.value.message
    assert len(server.chat_requests) == 1


async def test_auth_and_not_found_messages(
    server: FakeOpenAI, provider: OpenAITextProvider
) -> None:
    server.script(invalid_api_key(), model_not_found("gpt-nope"))

    with pytest.raises(PermanentFailure, match="rejected the API key"):
        await provider.complete(backstory_job())
    with pytest.raises(PermanentFailure, match="gpt-nope"):
        await provider.complete(backstory_job(model="gpt-nope"))


async def test_wrong_key_is_rejected_by_the_server(server: FakeOpenAI) -> None:
    p = OpenAITextProvider("sk-wrong", base_url=server.base_url, model="m", timeout_s=5.0)
    try:
        with pytest.raises(PermanentFailure, match="rejected the API key") as caught:
            await p.complete(backstory_job())
    finally:
        await p.aclose()
    assert caught.value.code == "no_provider"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "150"}, 0.15),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.25", "retry-after-ms": "20"}, 0.02),
        ({}, None),
    ],
)
async def test_rate_limit_carries_retry_after(
    server: FakeOpenAI,
    provider: OpenAITextProvider,
    headers: dict[str, str],
    expected: float | None,
) -> None:
    # Short waits happen in place twice; the third 429 goes back to the consumer's delay queues.
    server.script(*[rate_limited(headers=headers)] * 3)

    with pytest.raises(TransientFailure) as caught:
        await provider.complete(backstory_job())

    assert caught.value.code == "rate_limited"
    assert caught.value.retry_after_s == expected
    assert len(server.chat_requests) == (3 if expected is not None and expected <= 5 else 1)


async def test_short_retry_after_is_waited_in_place(
    server: FakeOpenAI, provider: OpenAITextProvider
) -> None:
    server.script(rate_limited(headers={"retry-after-ms": "300"}))
    result = await provider.complete(backstory_job())
    json.loads(result.text)
    first, second = server.requests[-2:]
    assert second.received_at - first.received_at >= 0.3


async def test_rate_limit_retry_after_http_date(
    server: FakeOpenAI, provider: OpenAITextProvider
) -> None:
    in_a_minute = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 60, UTC)
    server.script(rate_limited(retry_after=format_datetime(in_a_minute, usegmt=True)))

    with pytest.raises(TransientFailure) as caught:
        await provider.complete(backstory_job())

    assert caught.value.retry_after_s is not None
    assert 55 <= caught.value.retry_after_s <= 61


async def test_sdk_retries_are_off(server: FakeOpenAI, provider: OpenAITextProvider) -> None:
    server.script(server_error(500), server_error(500), server_error(500))

    with pytest.raises(TransientFailure):
        await provider.complete(backstory_job())

    assert len(server.chat_requests) == 1
    assert server.calls_by_model == {DEFAULT_MODEL: 1}
    assert server.pending == 2


async def test_timeout(server: FakeOpenAI) -> None:
    server.script(hang(30))
    p = OpenAITextProvider(server.api_key, base_url=server.base_url, model="m", timeout_s=0.2)
    try:
        with pytest.raises(TransientFailure) as caught:
            await p.complete(backstory_job())
    finally:
        await p.aclose()
    assert caught.value.code == "timeout"
    assert caught.value.message == "openai request timed out (m)"


async def test_connection_refused() -> None:
    async with FakeOpenAI() as gone:
        base_url = gone.base_url  # nothing listens there once the server stops
    p = OpenAITextProvider("sk-test", base_url=base_url, model="m", timeout_s=2.0)
    try:
        with pytest.raises(TransientFailure) as caught:
            await p.complete(backstory_job())
    finally:
        await p.aclose()
    assert caught.value.code == "provider_unavailable"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "250"}, 0.25),
        ({"retry-after": "3"}, 3.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"retry-after-ms": "500", "retry-after": "9"}, 0.5),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after-ms": "-1"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT"}, 30.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:27:00 GMT"}, 0.0),  # in the past
        ({"retry-after": "not a date"}, None),
        ({"x-ratelimit-reset-requests": "1s"}, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()
    assert retry_after_seconds(headers, now=now) == expected


# ----------------------------------------------------------------------------- the fake itself


async def test_fake_streams_chunks_in_order_with_usage(
    server: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    text = '{"title": "The Sunken Crown", "hook": "A bell tolls under the lake."}'
    server.script(reply(text, chunk_count=5))

    stream = await client.chat.completions.create(
        model="gpt-stream",
        messages=[{"role": "user", "content": "go"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert server.chat_requests[0].body["stream"] is True
    deltas = [c.choices[0].delta.content for c in chunks if c.choices]
    pieces = [d for d in deltas if d]
    assert len(pieces) >= 3
    assert "".join(pieces) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert {c.model for c in chunks} == {"gpt-stream"}


async def test_fake_stream_break_raises_in_sdk(
    server: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    server.script(reply("abcdefghijklmnopqrstuvwxyz", break_after_chunks=2))

    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "go"}], stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    assert "".join(received) == "abcdefg"  # role chunk + first of 4 deltas, then the drop


async def test_fake_extra_headers_and_default_text(
    server: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    limits = {"x-ratelimit-remaining-requests": "59", "x-ratelimit-reset-requests": "1s"}
    server.script(reply(headers=limits))

    raw = await client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hello"}]
    )
    completion = raw.parse()

    assert raw.headers["x-ratelimit-remaining-requests"] == "59"
    assert raw.headers["x-ratelimit-reset-requests"] == "1s"
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content  # plain text without a response_format


def _content_models() -> list[type[BaseModel]]:
    return [
        cls
        for name, cls in inspect.getmembers(content, inspect.isclass)
        if issubclass(cls, BaseModel)
        and cls.__module__ == content.__name__
        and not name.startswith("_")
    ]


@pytest.mark.parametrize("model", _content_models(), ids=lambda m: m.__name__)
def test_sample_for_schema_is_valid(model: type[BaseModel]) -> None:
    sample = sample_for_schema(model.model_json_schema())
    model.model_validate(sample)


def test_sample_for_schema_covers_keywords() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "kind": {"enum": ["a", "b"]},
            "fixed": {"const": 3},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 2, "maximum": 4}]},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "flag": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 3},
            "none": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
            "long": {"type": "string", "minLength": 50},
            "child": {"$ref": "#/$defs/Child"},
        },
        "$defs": {"Child": {"type": "object", "properties": {"n": {"type": "integer"}}}},
    }
    sample = sample_for_schema(schema)
    assert sample["kind"] == "a"
    assert sample["fixed"] == 3
    assert sample["maybe"] == 3
    assert 0 < sample["ratio"] <= 1
    assert sample["flag"] is True
    assert len(sample["tags"]) == 3 and all(len(t) <= 3 for t in sample["tags"])
    assert sample["none"] == []
    assert len(sample["long"]) >= 50
    assert isinstance(sample["child"]["n"], int)


async def test_an_interrupted_stream_is_a_transient_failure_not_an_empty_answer(
    server: FakeOpenAI, provider: OpenAITextProvider
) -> None:
    # llama-cpp-python ends a stream with [DONE] and no finish_reason when a newer request
    # interrupts it: unfinished text restarts on the next model; none at all is retried later.
    server.script(reply("", interrupted=True), reply('{"half": ', interrupted=True))
    p = OpenAITextProvider(server.api_key, base_url=server.base_url, model="m1", timeout_s=5.0,
                           fallback_models=("m2",))
    quiet, cut = RecordingSink(), RecordingSink()
    try:
        with pytest.raises(TransientFailure, match="ended before the answer finished") as empty:
            await provider.complete(backstory_job(), quiet)
        result = await p.complete(backstory_job(), cut)
    finally:
        await p.aclose()
    assert empty.value.code == "provider_unavailable" and quiet.restarts == []
    assert cut.restarts == ["stream from m1 broke; restarting on m2"]
    assert result.model_used == "m2" and result.fallback_used is True
    assert [r.body["model"] for r in server.chat_requests] == [DEFAULT_MODEL, "m1", "m2"]
