"""OpenAI's errors translated onto the service's error tree, at the provider boundary.

Servers other than OpenAI answer some bad requests with a 500 (llama-cpp-python wraps its
request validation errors so), and their messages may carry file paths, line numbers and stack
frames: a request-validation 500 is a refusal like a 400, and every message is scrubbed here
before it can reach an event.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC
from typing import TYPE_CHECKING

from llm_consumer.errors import ModelUnavailable, PermanentFailure, ServiceError, TransientFailure
from llm_consumer.providers.capabilities import Capabilities, Refusal
from llm_consumer.providers.chat_http import StatusFailure, StreamFailed, TransportFailure

if TYPE_CHECKING:  # the SDK is imported by the clients that use it (Batch, Images), on use
    import openai

_CONTENT_POLICY_CODES = frozenset({"content_policy_violation", "content_filter"})
MAX_MESSAGE_CHARS = 300
_TRACEBACK = re.compile(r"Traceback \(most recent call last\):?(.*)", re.S)
_FRAME = re.compile(r'\bFile "[^"]*", line \d+(?:, in [\w.<>]+)?')
_LINE = re.compile(r",? (?:at )?line \d+\b")
# An absolute path (not inside a URL): a file with an extension, or under a system root.
_PATH = re.compile(r"(?<![\w:/.])(?:[A-Za-z]:)?(?:[\\/][\w.@+-]+)+[\\/]?(?::\d+)*")
_ROOTS = ("usr", "home", "opt", "tmp", "var", "root", "srv", "app", "work", "data", "users",
          "mnt", "etc", "lib", "proc", "site-packages", "dist-packages")
_SOURCE_FILE = re.compile(r"\.(?:py|pyc|pyx|so|c|cc|cpp|h|hpp|go|rs|js|ts|java|rb|gguf|bin)\b",
                          re.I)
_PYDANTIC_ITEM = re.compile(
    r"""'loc': \(([^)]*)\), 'msg': (?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")""")
_VALIDATION_MARKERS = ("validation error", "input should be", "field required",
                       "extra inputs are not permitted", "literal_error", "requestvalidationerror",
                       "value is not a valid", "unexpected keyword argument")


def _hide_path(found: re.Match[str]) -> str:
    path = found.group(0)
    first = path.lstrip("\\/").split("/")[0].split("\\")[0].lower()
    if first.endswith(":") or first in _ROOTS or _SOURCE_FILE.search(path):
        return "<path>"
    return path


def _last_line(found: re.Match[str]) -> str:
    """A stack trace stands for its last line: the exception and its message."""
    lines = [line for line in found.group(1).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _validation_summary(message: str) -> str | None:
    """'body.response_format.type: Input should be ...' from pydantic's error dicts, if any."""
    items = _PYDANTIC_ITEM.findall(message)
    if not items:
        return None
    parts = []
    for loc, single, double in items:
        msg = single or double
        where = ".".join(p.strip(" '\"") for p in loc.split(",") if p.strip(" '\""))
        parts.append(f"{where}: {msg}" if where else msg)
    return "request validation failed: " + "; ".join(parts)


def scrub(message: str) -> str:
    """One line of a provider's message without its internals (paths, lines, stack frames)."""
    text = _validation_summary(message) or message
    text = _TRACEBACK.sub(_last_line, text)
    text = _FRAME.sub("", text)
    text = _PATH.sub(_hide_path, text)
    text = _LINE.sub("", text)
    text = " ".join(text.split())
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1].rstrip() + "…"
    return text or "no message"


def is_request_validation(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in _VALIDATION_MARKERS)


class RequestRefused(PermanentFailure):
    """The server refused what the request contained. Permanent, unless the provider can
    phrase the call differently (`adapted`: the capabilities to retry with)."""

    def __init__(self, message: str, refusal: Refusal) -> None:
        super().__init__(message, code="invalid_request")
        self.refusal = refusal
        self.adapted: Capabilities | None = None


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


def _sdk_status(err: openai.APIStatusError) -> StatusFailure:
    """The SDK's status error as the fields of OpenAI's error body (which the SDK already
    unwrapped from `error`)."""
    body = err.body if isinstance(err.body, Mapping) else {}
    code = err.code or str(body.get("code") or "") or str(body.get("type") or "")
    message = str(body.get("message") or body.get("detail") or err.message)
    param = err.param or (str(body["param"]) if body.get("param") else None)
    return StatusFailure(err.status_code, err.response.headers, message, code=code or None,
                         param=param, type=err.type)


def status_error(failure: StatusFailure, model: str) -> ServiceError:
    """An error answer (status, OpenAI's error fields) as the service's error."""
    status = failure.status
    code = failure.code or failure.type or ""
    raw_message = failure.message
    message = scrub(raw_message)
    detail = f"openai {status}: {message}"
    if status == 429:
        if code == "insufficient_quota" or failure.type == "insufficient_quota":
            return PermanentFailure(detail, code="quota_exhausted")
        retry_after = retry_after_seconds(failure.headers)
        return TransientFailure(detail, code="rate_limited", retry_after_s=retry_after)
    if status == 400 and code == "model_not_found":  # llama-cpp-python says so with a 400
        return ModelUnavailable(f"openai has no model {model!r}: {message}", code="no_provider")
    if status in (400, 422) or (status >= 500 and is_request_validation(raw_message)):
        if code == "context_length_exceeded":
            return PermanentFailure(detail, code="context_length_exceeded")
        if code in _CONTENT_POLICY_CODES or "safety system" in message.lower():
            return PermanentFailure(detail, code="content_policy")
        return RequestRefused(detail, Refusal(status, message, failure.param, code or None))
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


def call_error(err: TransportFailure | StatusFailure | StreamFailed, model: str) -> ServiceError:
    """A failed call of chat_http as the service's error."""
    if isinstance(err, StatusFailure):
        return status_error(err, model)
    if isinstance(err, StreamFailed):
        return TransientFailure(f"openai error: {scrub(str(err))}", code="provider_unavailable")
    if err.timed_out:
        return TransientFailure(f"openai request timed out ({model})", code="timeout")
    if err.refused:
        return TransientFailure(f"openai unreachable ({model}): connection refused",
                                code="provider_unavailable")
    return TransientFailure(f"openai call failed: {scrub(str(err))}", code="provider_unavailable")


def translate_error(err: openai.OpenAIError, model: str) -> ServiceError:
    """Map one SDK exception (the Batch and Images APIs' client) onto the service's errors."""
    import openai

    if isinstance(err, openai.APITimeoutError) and not _refused(err):
        return TransientFailure(f"openai request timed out ({model})", code="timeout")
    if isinstance(err, openai.APITimeoutError):
        return TransientFailure(f"openai unreachable ({model}): connection refused",
                                code="provider_unavailable")
    if isinstance(err, openai.APIConnectionError):
        return TransientFailure(f"openai unreachable: {scrub(err.message)}",
                                code="provider_unavailable")
    if isinstance(err, openai.APIStatusError):
        return status_error(_sdk_status(err), model)
    # Malformed responses and anything else the SDK raises: the provider misbehaved.
    return TransientFailure(f"openai error: {scrub(str(err))}", code="provider_unavailable")


def _refused(err: BaseException) -> bool:
    """The aiohttp transport reports a refused connection as a connect timeout; the cause
    chain still holds the OSError that says what happened."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
