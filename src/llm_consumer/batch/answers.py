"""What a batch's output and error lines mean for each request: an answer to read as a live
one (`ReplayProvider`), or a failure with the code a realtime call would have had."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from llm_consumer.errors import ErrorCode, PermanentFailure
from llm_consumer.events.results import TokenUsage
from llm_consumer.providers.base import StreamSink, TextCompletion, TextJob, TextProvider
from llm_consumer.providers.chat_wire import NotACompletion, completion_from
from llm_consumer.providers.openai_batch import BatchState
from llm_consumer.providers.openai_errors import scrub


@dataclass(frozen=True, slots=True)
class Failure:
    code: ErrorCode
    message: str
    retryable: bool


class ReplayProvider:
    """A text provider that answers once with a batch's completion: the realtime handler reads
    it as it reads a live answer. Batch answers are not repaired (a second call fails)."""

    name = "openai-batch"

    def __init__(self, completion: TextCompletion, chain: TextProvider) -> None:
        self._completion: TextCompletion | None = completion
        self._chain = chain

    def models_for(self, requested: str | None) -> tuple[str, ...]:
        return self._chain.models_for(requested)

    async def complete(self, job: TextJob, sink: StreamSink | None = None) -> TextCompletion:
        completion, self._completion = self._completion, None
        if completion is None:
            raise PermanentFailure("the batch answer was unusable", code="internal")
        return completion

    async def aclose(self) -> None:
        return None


def line_outcome(line: dict[str, Any] | None, state: BatchState, *,
                 model: str) -> TextCompletion | Failure:
    """What one entry's output or error line (or its absence) means (`model`: the one the entry
    was batched for, when the answer names none)."""
    if line is None:
        return unrun(state)
    error = line.get("error")
    response = line.get("response") or {}
    if error:
        code = str(error.get("code") or "")
        if code == "batch_expired":
            return unrun(replace(state, status="expired"))
        if code == "batch_cancelled":
            return unrun(replace(state, status="cancelled"))
        return Failure("provider_unavailable", scrub(f"openai batch: {code}: "
                                                      f"{error.get('message')}"), True)
    status = int(response.get("status_code") or 0)
    body = response.get("body") or {}
    if status != 200:
        return _http_failure(status, body)
    try:
        answer = completion_from(body)
    except NotACompletion as err:
        return Failure("provider_unavailable", f"openai batch: the answer was no completion "
                       f"({err})", True)
    if answer.refusal:
        return Failure("content_policy", f"openai refused: {scrub(answer.refusal)}", False)
    usage = answer.usage
    return TextCompletion(
        text=answer.text, model_used=answer.model or model,
        usage=TokenUsage(prompt_tokens=usage.prompt_tokens if usage else 0,
                         completion_tokens=usage.completion_tokens if usage else 0,
                         total_tokens=usage.total_tokens if usage else 0,
                         estimated=usage is None),
        finish_reason=answer.finish_reason)


def _http_failure(status: int, body: dict[str, Any]) -> Failure:
    error = body.get("error") or {}
    code = str(error.get("code") or "")
    message = scrub(f"openai {status} in batch: {error.get('message') or 'no message'}")
    if code == "context_length_exceeded":
        return Failure("context_length_exceeded", message, False)
    if code == "content_policy_violation":
        return Failure("content_policy", message, False)
    if status == 429:
        return Failure("rate_limited", message, True)
    if status >= 500:
        return Failure("provider_unavailable", message, True)
    return Failure("invalid_request", message, False)


def unrun(state: BatchState) -> Failure:
    """A request the batch never ran, by how the batch ended."""
    if state.status == "expired":
        return Failure("timeout", "the batch expired (24 h window) before this request ran; "
                       "send it again", True)
    if state.status == "cancelled":
        return Failure("provider_unavailable", "the batch was cancelled before this request "
                       "ran; send it again", True)
    if state.status == "failed":
        reasons = "; ".join(state.errors) or "no reason given"
        return Failure("invalid_request", scrub(f"the provider refused the batch: {reasons}"),
                       False)
    return Failure("internal", f"the batch ended ({state.status}) without this request", False)

