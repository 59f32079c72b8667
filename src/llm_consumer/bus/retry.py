"""When to try a failed request again: a small pure function, tested by table."""

from __future__ import annotations

BASE_DELAY_S = 1.0
MAX_DELAY_S = 600.0


def retry_delay(attempt: int, retry_after_s: float | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt counts from 0).

    Exponential from BASE_DELAY_S, capped at MAX_DELAY_S, never shorter than what the provider
    asked for with retry-after. The delay queues round it up to their fixed steps.
    """
    backoff = min(MAX_DELAY_S, BASE_DELAY_S * (2 ** max(attempt, 0)))
    if retry_after_s is not None and retry_after_s > 0:
        return min(MAX_DELAY_S, max(backoff, retry_after_s))
    return backoff
