"""What becomes of a request, decided in one pure function.

`decide` takes what running the request gave (its answer, the error it ended in, or what the
job ledger already knew about it) with the delivery's retry state, and returns the one broker
outcome; the consumer then carries it out in a fixed order (ledger, job status, events, copy,
ack). The table in tests/bus/test_outcome.py is the rulebook:

    answer                               Completed
    stored for a batch                   Batch (job.status batched; the batch answers later)
    ledger: done                         Duplicate (re-publish the stored events)
    ledger: running on a live replica    Busy (look again after BUSY_RETRY_S)
    ledger: cancelled                    Failed cancelled, remembered
    Deferred, waited < max               Defer (same attempt, wait added up)
    Deferred, waited >= max              Failed rate_limited, dead-lettered
    Transient, attempts left             Retry (attempt + 1, back-off)
    Transient, none left                 Failed, dead-lettered (ops may replay)
    Permanent                            Failed, remembered (a re-send gets the same answer)
    anything else (internal)             Failed, dead-lettered
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_consumer.admission.run import Answer
from llm_consumer.batch import Batched
from llm_consumer.bus.retry import deferral_delay, retry_delay
from llm_consumer.errors import Deferred, PermanentFailure, ServiceError, TransientFailure
from llm_consumer.events.results import JobState
from llm_consumer.store.jobs import Claim

BUSY_RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class Limits:
    max_attempts: int
    max_defer_s: float  # total rate-limit wait in delay queues before `rate_limited`


@dataclass(frozen=True, slots=True)
class Completed:
    answer: Answer


@dataclass(frozen=True, slots=True)
class Batch:
    """Stored for batch delivery: answered by the batch coordinator later (batch/)."""


@dataclass(frozen=True, slots=True)
class Duplicate:
    stored_events: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Busy:
    delay_s: float = BUSY_RETRY_S


@dataclass(frozen=True, slots=True)
class Retry:
    attempt: int  # the attempt the copy carries
    delay_s: float


@dataclass(frozen=True, slots=True)
class Defer:
    delay_s: float
    deferred_s: float  # the total wait the copy carries


@dataclass(frozen=True, slots=True)
class Failed:
    error: ServiceError
    state: JobState  # failed or cancelled
    remember: bool  # final for this request: the ledger answers a re-send with it
    dead_letter: bool  # ops may replay it from the dead-letter queue


Outcome = Completed | Batch | Duplicate | Busy | Retry | Defer | Failed
Result = Answer | ServiceError | Claim  # what the run stage gave


def decide(result: Result, *, attempt: int, deferred_s: float, limits: Limits) -> Outcome:
    if isinstance(result, Claim):
        return _known(result)
    if isinstance(result, Answer):
        return Completed(result)
    error = result
    if isinstance(error, Batched):
        return Batch()
    if isinstance(error, Deferred):
        if deferred_s < limits.max_defer_s:
            delay = deferral_delay(min(error.retry_after_s, limits.max_defer_s - deferred_s))
            return Defer(delay, deferred_s + delay)
        error = Deferred(f"{error.message}; gave up after {deferred_s:g}s of waiting "
                         "(RATE_LIMIT_MAX_WAIT_S)", retry_after_s=error.retry_after_s)
    elif isinstance(error, TransientFailure) and attempt + 1 < limits.max_attempts:
        return Retry(attempt + 1, retry_delay(attempt, error.retry_after_s))
    permanent = isinstance(error, PermanentFailure)
    return Failed(error, "cancelled" if error.code == "cancelled" else "failed",
                  remember=permanent, dead_letter=not permanent)


def _known(claim: Claim) -> Outcome:
    if claim.verdict == "done":
        return Duplicate(claim.stored_events)
    if claim.verdict == "cancelled":
        return Failed(PermanentFailure("cancelled before it started", code="cancelled"),
                      "cancelled", remember=True, dead_letter=False)
    return Busy()
