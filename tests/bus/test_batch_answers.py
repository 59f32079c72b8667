"""A Batch API output line read as the realtime path reads a live answer (batch/answers.py,
through providers/chat_wire.py): the answer, a refusal, a body that is no completion, and an
answer whose server sent no usage. `tests/bus/test_batch.py` runs whole batches over AMQP."""

from __future__ import annotations

from typing import Any

from llm_consumer.batch.answers import Failure, line_outcome
from llm_consumer.providers.base import TextCompletion
from llm_consumer.providers.openai_batch import BatchState

DONE = BatchState("batch_1", "completed", "file-out", None, ())


def output_line(body: Any, status: int = 200) -> dict[str, Any]:
    return {"id": "batch_req_1", "custom_id": "r1", "error": None,
            "response": {"status_code": status, "request_id": "req_1", "body": body}}


def completion(message: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
            "choices": [{"index": 0, "finish_reason": "stop", "message": message}], **extra}


def test_an_answer_reads_as_a_live_one() -> None:
    body = completion({"role": "assistant", "content": "{\"a\": 1}"}, model="gpt-5-nano-x",
                      usage={"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14})
    outcome = line_outcome(output_line(body), DONE, model="gpt-5-nano")
    assert isinstance(outcome, TextCompletion)
    assert (outcome.text, outcome.model_used, outcome.finish_reason) == (
        "{\"a\": 1}", "gpt-5-nano-x", "stop")
    assert (outcome.usage.total_tokens, outcome.usage.estimated) == (14, False)


def test_no_usage_and_no_model_fall_back_to_the_batched_model_and_a_marked_count() -> None:
    outcome = line_outcome(output_line(completion({"content": "hi"})), DONE, model="gpt-5-nano")
    assert isinstance(outcome, TextCompletion)
    assert outcome.model_used == "gpt-5-nano"
    assert outcome.usage.estimated and outcome.usage.total_tokens == 0


def test_a_refusal_is_a_content_policy_failure() -> None:
    body = completion({"content": None, "refusal": "I can't help with that."})
    assert line_outcome(output_line(body), DONE, model="m") == Failure(
        "content_policy", "openai refused: I can't help with that.", False)


def test_a_body_that_is_no_completion_is_retryable() -> None:
    for body in ({"object": "chat.completion", "choices": []}, {"choices": [{"index": 0}]},
                 "text"):
        outcome = line_outcome(output_line(body), DONE, model="m")
        assert isinstance(outcome, Failure)
        assert outcome.code == "provider_unavailable" and outcome.retryable
        assert outcome.message.startswith("openai batch: the answer was no completion")
