"""OpenAI chat completions with structured output, vendor errors translated at this boundary."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from datetime import UTC

import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from llm_consumer.errors import PermanentFailure, ServiceError, TransientFailure
from llm_consumer.events.results import TokenUsage
from llm_consumer.providers.base import TextCompletion, TextJob

_CONTENT_POLICY_CODES = frozenset({"content_policy_violation", "content_filter"})


def retry_after_seconds(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` (ms) or `retry-after` (seconds or an HTTP date).

    Names match case-insensitively; unparsable or non-finite values are ignored, past dates give 0.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = lowered.get(name)
        if raw is None:
            continue
        try:
            value = float(raw.strip())
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            return value / divisor
    raw_date = lowered.get("retry-after")
    if raw_date is None:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(raw_date.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # "-0000" zones parse naive; HTTP dates are always UTC
        parsed = parsed.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, parsed.timestamp() - current)


def _estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _error_fields(err: openai.APIStatusError) -> tuple[str, str]:
    """(code, message) from OpenAI's error body, which the SDK already unwrapped from `error`."""
    body = err.body if isinstance(err.body, Mapping) else {}
    code = err.code or str(body.get("code") or "") or str(body.get("type") or "")
    message = str(body.get("message") or err.message)
    return code, message


def _translate_status(err: openai.APIStatusError, model: str) -> ServiceError:
    status = err.status_code
    code, message = _error_fields(err)
    detail = f"openai {status}: {message}"
    if status == 429:
        if code == "insufficient_quota" or err.type == "insufficient_quota":
            return PermanentFailure(detail, code="quota_exhausted")
        retry_after = retry_after_seconds(err.response.headers)
        return TransientFailure(detail, code="rate_limited", retry_after_s=retry_after)
    if status in (400, 422):
        if code == "context_length_exceeded":
            return PermanentFailure(detail, code="context_length_exceeded")
        if code in _CONTENT_POLICY_CODES or "safety system" in message.lower():
            return PermanentFailure(detail, code="content_policy")
        return PermanentFailure(detail, code="invalid_request")
    if status in (401, 403):
        return PermanentFailure(
            f"openai rejected the API key ({status}): {message}", code="no_provider"
        )
    if status == 404:
        return PermanentFailure(
            f"openai has no model {model!r} (or no access to it): {message}", code="no_provider"
        )
    if status == 408:
        return TransientFailure(detail, code="timeout")
    if status == 409 or status >= 500:
        return TransientFailure(detail, code="provider_unavailable")
    return PermanentFailure(detail, code="invalid_request")


def translate_error(err: openai.OpenAIError, model: str) -> ServiceError:
    """Map one SDK exception onto the llm_consumer error tree."""
    if isinstance(err, openai.APITimeoutError):
        return TransientFailure(f"openai request timed out ({model})", code="timeout")
    if isinstance(err, openai.APIConnectionError):
        return TransientFailure(f"openai unreachable: {err.message}", code="provider_unavailable")
    if isinstance(err, openai.APIStatusError):
        return _translate_status(err, model)
    # Malformed responses and anything else the SDK raises: the provider misbehaved.
    return TransientFailure(f"openai error: {err}", code="provider_unavailable")


class OpenAITextProvider:
    name = "openai"

    def __init__(self, api_key: str, *, base_url: str | None, model: str, timeout_s: float) -> None:
        self.model = model
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0
        )

    async def complete(self, job: TextJob) -> TextCompletion:
        model = job.model or self.model
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": job.system},
            {"role": "user", "content": job.user},
        ]
        try:
            response: ChatCompletion = await self._client.chat.completions.create(
                model=model,
                messages=messages,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": job.schema_name, "schema": job.schema, "strict": False},
                },
                max_completion_tokens=openai.omit if job.max_tokens is None else job.max_tokens,
                temperature=openai.omit if job.temperature is None else job.temperature,
            )
        except openai.OpenAIError as err:
            raise translate_error(err, model) from err
        return self._to_completion(job, response)

    def _to_completion(self, job: TextJob, response: ChatCompletion) -> TextCompletion:
        if not response.choices:
            raise TransientFailure("openai answered with no choices", code="provider_unavailable")
        choice = response.choices[0]
        if choice.message.refusal:
            raise PermanentFailure(
                f"openai refused: {choice.message.refusal}", code="content_policy"
            )
        text = choice.message.content or ""
        if choice.finish_reason == "content_filter" and not text:
            raise PermanentFailure("openai filtered the answer", code="content_policy")
        if response.usage is not None:
            usage = TokenUsage(
                prompt_tokens=response.usage.prompt_tokens,
                completion_tokens=response.usage.completion_tokens,
                total_tokens=response.usage.total_tokens,
            )
        else:
            prompt = _estimate_tokens(job.system + job.user)
            completion = _estimate_tokens(text)
            usage = TokenUsage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                estimated=True,
            )
        return TextCompletion(
            text=text,
            model_used=response.model,
            usage=usage,
            finish_reason=choice.finish_reason,
        )

    async def aclose(self) -> None:
        await self._client.close()
