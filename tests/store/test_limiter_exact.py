"""Several processes hammer one limit in the real Redis: no window of the limit's length ever
admits more than the limit, and no request is refused while its window still had room (figures:
bench/)."""

from __future__ import annotations

import importlib.util
import sys
from bisect import bisect_right
from pathlib import Path
from types import ModuleType

import pytest

from tests.store import limiter_workers

BENCH = Path(__file__).resolve().parents[2] / "bench" / "limiter_accuracy.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("limiter_accuracy", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("limiter_accuracy", module)
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def in_window(ordered_us: list[int], at_us: int, window_us: int) -> int:
    """How many of the sorted times fall in the half-open window (at - window, at]."""
    return bisect_right(ordered_us, at_us) - bisect_right(ordered_us, at_us - window_us)


def test_the_window_count_itself() -> None:
    assert bench.most_in_window([0, 10, 20, 30], 20) == 2  # (t - 20, t]: 20 drops 0
    assert bench.most_in_window([0, 10, 19, 30], 20) == 3
    assert bench.use_after_first_window([0, 5, 10, 15], 2, 10, 20, step_us=5) == [
        0.5, 1.0, 1.0]
    assert in_window([0, 10, 20, 30], 20, 20) == 2
    assert in_window([0, 10, 20, 30], 25, 20) == 2
    assert in_window([0, 10, 20, 30], 9, 20) == 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sleep", "hammer"])
def test_processes_sharing_one_limit_never_exceed_it(mode: str) -> None:
    """Judged on the limiter's own record (Redis server time of every admission and refusal),
    not on how many tries a loaded machine let the workers make."""
    limit, window_s = 45, 3.0
    run = limiter_workers.run_workers(4, limit, window_s, 9.0, mode)
    window_us = limiter_workers.scope(limit, window_s).window_us  # with its edge margin
    assert bench.most_in_window(run.admitted_us, window_us) <= limit
    assert run.refused_us, "the workers asked for more than the limit"
    with_room = [at for at in run.refused_us
                 if in_window(run.admitted_us, at, window_us) < limit]
    assert with_room == [], f"{len(with_room)} of {len(run.refused_us)} refused with room"
