"""When to try a failed request again: a small pure function, tested by table."""

from __future__ import annotations

from llm_consumer.bus.topology import DELAY_STEPS_S

BASE_DELAY_S = 1.0
MAX_DELAY_S = 600.0


def retry_delay(attempt: int, retry_after_s: float | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt counts from 0).

    Exponential from BASE_DELAY_S, capped at MAX_DELAY_S, never shorter than what the provider
    asked for with retry-after. The delay queues round it up to their fixed steps.
    """
    backoff: float = min(MAX_DELAY_S, BASE_DELAY_S * 2.0 ** max(attempt, 0))
    if retry_after_s is not None and retry_after_s > 0:
        return min(MAX_DELAY_S, max(backoff, retry_after_s))
    return backoff


def deferral_delay(retry_after_s: float) -> float:
    """The delay queue for a rate-limit wait: the longest step not past the next free slot
    (at least the shortest step), so a deferred request is looked at again on time, not late."""
    fitting = [step for step in DELAY_STEPS_S if step <= retry_after_s]
    return float(max(fitting, default=DELAY_STEPS_S[0]))
