"""Chat Completions answers read as plain data (providers/chat_wire.py): the fields the service
uses come out of bodies and chunks as servers send them, and a body that is no completion is
named as such. The provider's own tests run the same code over HTTP against the fake server
and llama-cpp-python's."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llm_consumer.providers.chat_wire import (
    NotACompletion,
    ReportedUsage,
    StreamedCompletion,
    completion_of,
    usage_of,
)


def body(**overrides: Any) -> bytes:
    completion: dict[str, Any] = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-5-nano-x",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Hello", "refusal": None}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
    completion.update(overrides)
    return orjson.dumps(completion)


def test_a_completion_gives_its_first_choice_model_and_usage() -> None:
    answer = completion_of(body())
    assert (answer.text, answer.refusal, answer.finish_reason, answer.model) == (
        "Hello", None, "stop", "gpt-5-nano-x")
    assert answer.usage == ReportedUsage(12, 3, 15)


def test_a_refusal_and_a_null_content_are_read() -> None:
    answer = completion_of(body(choices=[{"finish_reason": "stop", "message": {
        "role": "assistant", "content": None, "refusal": "I can't help with that."}}]))
    assert answer.text == "" and answer.refusal == "I can't help with that."


@pytest.mark.parametrize(("raw", "why"), [
    (b"<html>bad gateway</html>", "not JSON"),
    (b"[1, 2]", "no choices"),
    (orjson.dumps({"object": "chat.completion", "choices": []}), "no choices"),
    (orjson.dumps({"choices": [{"finish_reason": "stop"}]}), "no message"),
    (orjson.dumps({"choices": ["text"]}), "no message"),
])
def test_a_body_that_is_no_completion_is_named(raw: bytes, why: str) -> None:
    with pytest.raises(NotACompletion, match=why):
        completion_of(raw)


@pytest.mark.parametrize(("usage", "expected"), [
    ({"prompt_tokens": 5, "completion_tokens": 7}, ReportedUsage(5, 7, 12)),  # no total
    ({"prompt_tokens": "5", "completion_tokens": 7, "total_tokens": 12}, None),
    ({"completion_tokens": 7}, None),
    (None, None),
    ("lots", None),
])
def test_usage_counts_only_when_the_server_sent_integers(usage: Any,
                                                         expected: ReportedUsage | None) -> None:
    assert usage_of(usage) == expected


def chunk(content: str | None = None, *, finish: str | None = None, **extra: Any) -> Any:
    delta: dict[str, Any] = {} if content is None else {"content": content}
    return {"id": "c", "object": "chat.completion.chunk", "model": "m-1",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def test_a_stream_is_folded_chunk_by_chunk() -> None:
    stream = StreamedCompletion()
    first = {"model": "m-1", "choices": [{"delta": {"role": "assistant", "content": ""}}]}
    chunks = [first, chunk("Once "), chunk("upon"), chunk(None, finish="length"),
              {"model": "m-1", "choices": [],
               "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}]
    deltas = [stream.take(item) for item in chunks]
    assert deltas == [None, "Once ", "upon", None, None]
    answer = stream.result()
    assert (answer.text, answer.finish_reason, answer.model, answer.refusal) == (
        "Once upon", "length", "m-1", None)
    assert answer.usage == ReportedUsage(9, 2, 11)


def test_stream_refusals_join_and_odd_chunks_add_nothing() -> None:
    stream = StreamedCompletion()
    for item in ({"choices": [{"delta": {"refusal": "I can't "}}]},
                 {"choices": [{"delta": {"refusal": "do that."}, "finish_reason": "stop"}]},
                 "not a chunk", {"choices": "none"}, {"choices": [{"delta": 3}]}, None):
        assert stream.take(item) is None
    answer = stream.result()
    assert answer.refusal == "I can't do that." and answer.text == ""
    assert answer.finish_reason == "stop" and answer.usage is None and answer.model is None
