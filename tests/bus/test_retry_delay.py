"""Delay before the next attempt through the delay queues, as a table."""

from __future__ import annotations

import pytest

from llm_consumer.bus.retry import retry_delay
from llm_consumer.bus.topology import build_topology


@pytest.mark.parametrize(("attempt", "retry_after", "expected"), [
    (0, None, 1.0), (1, None, 2.0), (3, None, 8.0), (12, None, 600.0),
    (0, 7.0, 7.0), (4, 3.0, 16.0), (0, 5000.0, 600.0), (0, 0.0, 1.0), (-1, None, 1.0),
])
def test_retry_delay(attempt: int, retry_after: float | None, expected: float) -> None:
    assert retry_delay(attempt, retry_after) == expected


@pytest.mark.parametrize(("wanted", "step"), [(0.2, 1), (1, 1), (7, 10), (600, 600),
                                              (5000, 600)])
def test_delay_queue_rounds_up(wanted: float, step: int) -> None:
    assert build_topology("llm.", "hub").delay_queue_for(wanted)[0] == step
