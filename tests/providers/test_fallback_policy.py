"""The decision after a failed provider call, as a table."""

from __future__ import annotations

import pytest

from llm_consumer.errors import ModelUnavailable, PermanentFailure, ServiceError, TransientFailure
from llm_consumer.providers.fallback_policy import Step, next_step

CASES: list[tuple[str, ServiceError, bool, int, Step]] = [
    ("5xx with a fallback", TransientFailure("503"), True, 0, Step("fallback")),
    ("5xx, last model", TransientFailure("503"), False, 0, Step("raise")),
    ("timeout with a fallback", TransientFailure("t", code="timeout"), True, 0, Step("fallback")),
    ("unknown model", ModelUnavailable("404"), True, 0, Step("fallback")),
    ("unknown model, last", ModelUnavailable("404"), False, 0, Step("raise")),
    ("context overflow", PermanentFailure("x", code="context_length_exceeded"), True, 0,
     Step("fallback")),
    ("short retry-after", TransientFailure("429", code="rate_limited", retry_after_s=0.5),
     True, 0, Step("wait", 0.5)),
    ("short retry-after, waited twice",
     TransientFailure("429", code="rate_limited", retry_after_s=0.5), True, 2, Step("raise")),
    ("long retry-after", TransientFailure("429", code="rate_limited", retry_after_s=30),
     True, 0, Step("raise")),
    ("429 without retry-after", TransientFailure("429", code="rate_limited"), True, 0,
     Step("raise")),
    ("quota exhausted", PermanentFailure("q", code="quota_exhausted"), True, 0, Step("raise")),
    ("content policy", PermanentFailure("p", code="content_policy"), True, 0, Step("raise")),
    ("bad api key", PermanentFailure("k", code="no_provider"), True, 0, Step("raise")),
    ("bad request", PermanentFailure("b", code="invalid_request"), True, 0, Step("raise")),
]


@pytest.mark.parametrize(("error", "has_next", "waits", "expected"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_next_step(error: ServiceError, has_next: bool, waits: int, expected: Step) -> None:
    assert next_step(error, has_next_model=has_next, waits_used=waits) == expected
