"""Several processes hammer one limit in the real Redis: no window of the limit's length ever
admits more than the limit, and under overload the limit is used (figures: bench/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "limiter_accuracy.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("limiter_accuracy", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("limiter_accuracy", module)
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def test_the_window_count_itself() -> None:
    assert bench.most_in_window([0, 10, 20, 30], 20) == 2  # (t - 20, t]: 20 drops 0
    assert bench.most_in_window([0, 10, 19, 30], 20) == 3
    assert bench.use_after_first_window([0, 5, 10, 15], 2, 10, 20, step_us=5) == [
        0.5, 1.0, 1.0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sleep", "hammer"])
def test_processes_sharing_one_limit_never_exceed_it(mode: str) -> None:
    limit, window_s = 45, 3.0
    times, calls, until_us = bench.run_workers(4, limit, window_s, 9.0, mode)
    assert bench.most_in_window(times, int(window_s * 1e6)) <= limit
    shares = bench.use_after_first_window(times, limit, int(window_s * 1e6), until_us)
    assert sum(shares) / len(shares) >= 0.95, "overloaded: the limit is used"
    assert calls >= len(times)
