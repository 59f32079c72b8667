"""What to do after a provider call failed: a small pure function, tested by table.

Fallback to the next model on 5xx, time-outs, an unknown model and context overflow; wait in
place for a short `retry-after`; never retry or fall back on exhausted quota, content-policy
refusals, rejected credentials or a bad request - unless the provider can phrase the same call
differently (`can_adapt`: the server refused a capability the provider can step down from, or
a parameter it can drop), which is retried at once on the same model. Everything else is raised
to the consumer, which retries through its delay queues (honouring `retry-after` there too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llm_consumer.errors import ModelUnavailable, ServiceError, TransientFailure

INLINE_WAIT_MAX_S = 5.0
MAX_INLINE_WAITS = 2
FALLBACK_CODES = frozenset({"provider_unavailable", "timeout", "context_length_exceeded"})


@dataclass(frozen=True, slots=True)
class Step:
    action: Literal["adapt", "fallback", "wait", "raise"]
    delay_s: float = 0.0


def next_step(error: ServiceError, *, has_next_model: bool, waits_used: int,
              inline_wait_max_s: float = INLINE_WAIT_MAX_S, can_adapt: bool = False) -> Step:
    if can_adapt:
        return Step("adapt")
    if isinstance(error, TransientFailure) and error.code == "rate_limited":
        wait = error.retry_after_s
        if wait is not None and wait <= inline_wait_max_s and waits_used < MAX_INLINE_WAITS:
            return Step("wait", wait)
        return Step("raise")
    if isinstance(error, ModelUnavailable) or error.code in FALLBACK_CODES:
        return Step("fallback") if has_next_model else Step("raise")
    return Step("raise")
