"""The broker outcome of every way a request can end: a table, no broker needed."""

from __future__ import annotations

import pytest

from llm_consumer.admission.run import Answer
from llm_consumer.batch import Batched
from llm_consumer.bus.outcome import (
    Batch,
    Busy,
    Completed,
    Defer,
    Duplicate,
    Failed,
    Limits,
    Outcome,
    Result,
    Retry,
    decide,
)
from llm_consumer.errors import (
    Deferred,
    InvalidRequest,
    PermanentFailure,
    ServiceError,
    TransientFailure,
)
from llm_consumer.events.results import JobStatus
from llm_consumer.handlers.base import Reply
from llm_consumer.store.jobs import Claim

LIMITS = Limits(max_attempts=5, max_defer_s=600.0)
REPLY = Reply("job.status", JobStatus(request_id="r", state="completed", attempt=0))
ANSWER = Answer((REPLY,), (), ())


def failed(code: str, state: str = "failed", *, remember: bool, dead_letter: bool,
           ) -> tuple[str, str, bool, bool]:
    return (code, state, remember, dead_letter)


ROWS: list[tuple[str, Result, int, float, Outcome | tuple[str, str, bool, bool]]] = [
    ("answered", ANSWER, 0, 0.0, Completed(ANSWER)),
    ("stored for a batch", Batched("entry-1"), 0, 0.0, Batch()),
    ("ledger done", Claim("done", stored_events=(b"{}",)), 3, 0.0, Duplicate((b"{}",))),
    ("ledger busy", Claim("busy", owner="other"), 0, 0.0, Busy(5.0)),
    ("ledger cancelled", Claim("cancelled"), 0, 0.0,
     failed("cancelled", "cancelled", remember=True, dead_letter=False)),
    ("provider 5xx, first attempt", TransientFailure("502"), 0, 0.0, Retry(1, 1.0)),
    ("provider 5xx, retry-after 30 s", TransientFailure("429", retry_after_s=30), 1, 0.0,
     Retry(2, 30.0)),
    ("time-out, third attempt", TransientFailure("slow", code="timeout"), 2, 0.0,
     Retry(3, 4.0)),
    ("transient, last attempt", TransientFailure("502"), 4, 0.0,
     failed("provider_unavailable", remember=False, dead_letter=True)),
    ("over a limit, first wait", Deferred("limit", retry_after_s=12), 0, 0.0, Defer(10.0, 10.0)),
    ("over a limit, waits keep the attempt", Deferred("limit", retry_after_s=1), 4, 30.0,
     Defer(1.0, 31.0)),
    ("over a limit, near the maximum wait", Deferred("limit", retry_after_s=120), 0, 590.0,
     Defer(10.0, 600.0)),
    ("over a limit, waited long enough", Deferred("limit", retry_after_s=5), 0, 600.0,
     failed("rate_limited", remember=False, dead_letter=True)),
    ("content policy", PermanentFailure("no", code="content_policy"), 0, 0.0,
     failed("content_policy", remember=True, dead_letter=False)),
    ("cancelled while running", PermanentFailure("stop", code="cancelled"), 1, 0.0,
     failed("cancelled", "cancelled", remember=True, dead_letter=False)),
    ("call cap reached", PermanentFailure("cap", code="quota_exhausted"), 3, 0.0,
     failed("quota_exhausted", remember=True, dead_letter=False)),
    ("bad context found by the handler", InvalidRequest("needs context.text"), 0, 0.0,
     failed("invalid_request", remember=False, dead_letter=True)),
    ("internal", ServiceError("boom"), 0, 0.0,
     failed("internal", remember=False, dead_letter=True)),
]


@pytest.mark.parametrize(("result", "attempt", "deferred_s", "expected"),
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_the_outcome_of_each_ending(result: Result, attempt: int, deferred_s: float,
                                    expected: Outcome | tuple[str, str, bool, bool]) -> None:
    outcome = decide(result, attempt=attempt, deferred_s=deferred_s, limits=LIMITS)
    if isinstance(expected, tuple):
        assert isinstance(outcome, Failed)
        assert (outcome.error.code, outcome.state, outcome.remember,
                outcome.dead_letter) == expected
    else:
        assert outcome == expected


def test_a_deferral_that_ran_out_says_how_long_it_waited() -> None:
    outcome = decide(Deferred("rate limit operation 'text' reached", retry_after_s=5),
                     attempt=0, deferred_s=600.0, limits=LIMITS)
    assert isinstance(outcome, Failed)
    assert "gave up after 600s of waiting (RATE_LIMIT_MAX_WAIT_S)" in outcome.error.message
