"""Which delay queue a rate-limit wait goes to: the longest step not past the free slot."""

from __future__ import annotations

import pytest

from llm_consumer.bus.retry import deferral_delay


@pytest.mark.parametrize(("retry_after", "step"), [
    (0.2, 1.0), (1.0, 1.0), (1.9, 1.0), (2.0, 2.0), (4.9, 2.0), (29.0, 10.0), (59.9, 30.0),
    (61.0, 60.0), (3600.0, 600.0)])
def test_deferral_delay(retry_after: float, step: float) -> None:
    assert deferral_delay(retry_after) == step
