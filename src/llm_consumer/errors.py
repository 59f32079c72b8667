"""The error tree. Each branch is a decision the consumer takes; nothing else acks or rejects.

    ServiceError                      code, message, retryable
    ├── RejectedMessage               dead-letter with reason (+ generation.failed when id known)
    │   ├── InvalidRequest            invalid_request
    │   ├── Unauthorized              unauthorized
    │   └── Forbidden                 forbidden
    ├── PermanentFailure              generation.failed, ack (content_policy, quota_exhausted,
    │   │                             context_length_exceeded, no_provider, cancelled)
    │   └── ModelUnavailable          no_provider for one model: a fallback model may serve
    └── TransientFailure              delay queue with attempt+1, then DLQ past the attempt limit
        │                             (provider_unavailable, rate_limited, timeout)
        └── Deferred                  over a rate limit: delay queue with the SAME attempt;
                                      rate_limited only past RATE_LIMIT_MAX_WAIT_S in total

Anything else escaping a handler is `internal`: dead-lettered and logged, never requeued hot.
Providers translate vendor errors into this tree at their boundary.
"""

from __future__ import annotations

from typing import Literal

ErrorCode = Literal[
    "unauthorized",
    "forbidden",
    "invalid_request",
    "content_policy",
    "context_length_exceeded",
    "quota_exhausted",
    "provider_unavailable",
    "rate_limited",
    "timeout",
    "cancelled",
    "no_provider",
    "internal",
]


class ServiceError(Exception):
    code: ErrorCode = "internal"
    retryable: bool = False

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class RejectedMessage(ServiceError):
    """The message itself is unacceptable: dead-letter it with the reason."""


class InvalidRequest(RejectedMessage):
    code: ErrorCode = "invalid_request"


class Unauthorized(RejectedMessage):
    code: ErrorCode = "unauthorized"


class Forbidden(RejectedMessage):
    code: ErrorCode = "forbidden"


class PermanentFailure(ServiceError):
    """The request was valid but cannot succeed as asked: report it, do not retry."""


class ModelUnavailable(PermanentFailure):
    """The provider does not serve the requested model (unknown, retired or not allowed)."""

    code: ErrorCode = "no_provider"


class TransientFailure(ServiceError):
    """May succeed later: retry through a delay queue."""

    retryable = True
    code: ErrorCode = "provider_unavailable"

    def __init__(
        self, message: str, *, code: ErrorCode | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Deferred(TransientFailure):
    """Over a rate limit: wait `retry_after_s` in a delay queue without using up an attempt."""

    code: ErrorCode = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_after_s: float = retry_after_s
