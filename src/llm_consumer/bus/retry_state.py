"""What a request's earlier attempts left behind, carried on the service's own copies.

A retry or deferral copy carries the attempt number, the time already waited for rate limits and
the provider calls already paid. Only the service may set them: a caller that sent
`x-attempt: 4` could skip its retries, and one that sent `x-provider-calls: 0` on a copy could
reset its cost cap. So every copy the service makes is signed (HMAC-SHA256 over the message id
and these values, with a key derived from SECRET_KEY), and a message whose signature is missing
or wrong is read as a first attempt that has spent nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from aio_pika.abc import FieldValue

ATTEMPT_HEADER = "x-attempt"
DEFERRED_HEADER = "x-deferred-s"  # seconds a request has waited in delay queues for rate limits
CALLS_HEADER = "x-provider-calls"  # provider calls paid by earlier attempts
SIGNATURE_HEADER = "x-llm-signature"
STATE_HEADERS = (ATTEMPT_HEADER, DEFERRED_HEADER, CALLS_HEADER, SIGNATURE_HEADER)
MAX_ATTEMPT = 1000
MAX_CALLS = 1_000_000


@dataclass(frozen=True, slots=True)
class RetryState:
    attempt: int = 0
    deferred_s: float = 0.0
    provider_calls: int = 0


FIRST = RetryState()


class RetrySigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def headers(self, message_id: str | None, state: RetryState) -> dict[str, FieldValue]:
        deferred = round(state.deferred_s, 3)
        return {
            ATTEMPT_HEADER: state.attempt,
            DEFERRED_HEADER: deferred,
            CALLS_HEADER: state.provider_calls,
            SIGNATURE_HEADER: self._sign(message_id, state.attempt, deferred,
                                         state.provider_calls),
        }

    def read(self, message_id: str | None, headers: Mapping[str, object] | None) -> RetryState:
        """The state the service signed on this copy; FIRST for anything else."""
        found = headers or {}
        attempt = found.get(ATTEMPT_HEADER)
        deferred = found.get(DEFERRED_HEADER)
        calls = found.get(CALLS_HEADER)
        signature = found.get(SIGNATURE_HEADER)
        if not (isinstance(attempt, int) and 0 <= attempt < MAX_ATTEMPT
                and isinstance(deferred, int | float) and deferred >= 0
                and isinstance(calls, int) and 0 <= calls < MAX_CALLS
                and isinstance(signature, str | bytes)):
            return FIRST
        given = signature.decode() if isinstance(signature, bytes) else signature
        expected = self._sign(message_id, attempt, round(float(deferred), 3), calls)
        if not hmac.compare_digest(given, expected):
            return FIRST
        return RetryState(attempt, float(deferred), calls)

    def _sign(self, message_id: str | None, attempt: int, deferred_s: float, calls: int) -> str:
        text = f"{message_id or ''}|{attempt}|{deferred_s:.3f}|{calls}"
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()
