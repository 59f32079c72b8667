"""OpenAI's errors translated onto the service's error tree, at the provider boundary."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from datetime import UTC

import openai

from llm_consumer.errors import ModelUnavailable, PermanentFailure, ServiceError, TransientFailure

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
        return ModelUnavailable(
            f"openai has no model {model!r} (or no access to it): {message}", code="no_provider"
        )
    if status == 408:
        return TransientFailure(detail, code="timeout")
    if status == 409 or status >= 500:
        return TransientFailure(detail, code="provider_unavailable")
    return PermanentFailure(detail, code="invalid_request")


def translate_error(err: openai.OpenAIError, model: str) -> ServiceError:
    """Map one SDK exception onto the llm_consumer error tree."""
    if isinstance(err, openai.APITimeoutError) and not _refused(err):
        return TransientFailure(f"openai request timed out ({model})", code="timeout")
    if isinstance(err, openai.APITimeoutError):
        return TransientFailure(f"openai unreachable ({model}): connection refused",
                                code="provider_unavailable")
    if isinstance(err, openai.APIConnectionError):
        return TransientFailure(f"openai unreachable: {err.message}", code="provider_unavailable")
    if isinstance(err, openai.APIStatusError):
        return _translate_status(err, model)
    # Malformed responses and anything else the SDK raises: the provider misbehaved.
    return TransientFailure(f"openai error: {err}", code="provider_unavailable")


def _refused(err: BaseException) -> bool:
    """The aiohttp transport reports a refused connection as a connect timeout; the cause
    chain still holds the OSError that says what happened."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
