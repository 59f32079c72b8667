"""Accuracy and cost of the shared rate limiter: several processes hammer one key in Redis.

    .venv/bin/python bench/limiter_accuracy.py --processes 4 --limit 50 --window 1 --seconds 6
    .venv/bin/python bench/limiter_accuracy.py --mode hammer        # no waiting between tries

Each worker process runs the service's own admission (`admit.lua` through `Admission`) on one
scope, records the Redis server time of every admission and counts its script calls; in
`sleep` mode a refused worker waits the `retry_after` it was given (as the service does), in
`hammer` mode it asks again at once. Printed: the most admissions seen in any window of the
limit's length (must not exceed the limit), how much of the limit was used in the windows
after the first (overload keeps it near the top), and Redis round trips per admission.
The test suite runs the workers through `worker` and checks the same figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from llm_consumer.store.admission import Admission, Admitted, Ask, Limited
from llm_consumer.store.health import RedisHealth
from llm_consumer.store.keys import Keys
from llm_consumer.store.ratelimit import Scope

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


async def work(prefix: str, limit: int, window_s: float, seconds: float, start_at: float,
               mode: str) -> dict[str, object]:
    redis = aioredis.from_url(REDIS_URL)
    admission = Admission(redis, Keys(prefix), RedisHealth(), replicas_hint=1, prices={})
    ask = Ask("bench", "", (Scope("operation", "bench", "count", limit, window_s),))
    await asyncio.sleep(max(0.0, start_at - time.time()))
    stop = time.monotonic() + seconds
    admitted: list[int] = []
    calls = 0
    while time.monotonic() < stop:
        verdict = await admission.admit(ask)
        calls += 1
        if isinstance(verdict, Admitted):
            admitted.append(verdict.at_us)
        elif isinstance(verdict, Limited) and mode == "sleep":
            await asyncio.sleep(min(verdict.retry_after_s, max(0.0, stop - time.monotonic())))
    await redis.aclose()
    return {"admitted": admitted, "calls": calls}


@dataclass(frozen=True, slots=True)
class Figures:
    admitted: int
    calls: int
    most_in_window: int
    mean_use: float  # share of the limit used, averaged over windows after the first
    p5_use: float
    least_use: float  # right after a burst, where the edge margin leaves a short gap

    def show(self, limit: int) -> str:
        return (f"admitted {self.admitted} with {self.calls} script calls "
                f"({self.calls / max(1, self.admitted):.2f} Redis round trips per admission)\n"
                f"most admitted in any window: {self.most_in_window} (limit {limit})\n"
                f"limit used in windows after the first: mean {self.mean_use:.1%}, "
                f"5th percentile {self.p5_use:.1%}, least {self.least_use:.1%}")


def most_in_window(times_us: list[int], window_us: int) -> int:
    """The most timestamps in any half-open window (t - window, t]."""
    ordered, most, start = sorted(times_us), 0, 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window_us:
            start += 1
        most = max(most, end - start + 1)
    return most


def use_after_first_window(times_us: list[int], limit: int, window_us: int, until_us: int,
                           step_us: int = 10_000) -> list[float]:
    """Shares of the limit used in windows (t - window, t] sampled every `step_us`, from the
    end of the first window to `until_us` (the end of the run), sorted."""
    ordered = sorted(times_us)
    shares, start, end = [], 0, 0
    for t in range(ordered[0] + window_us, until_us + 1, step_us):
        while end < len(ordered) and ordered[end] <= t:
            end += 1
        while ordered[start] <= t - window_us:
            start += 1
        shares.append((end - start) / limit)
    return sorted(shares)


def run_workers(processes: int, limit: int, window_s: float, seconds: float,
                mode: str) -> tuple[list[int], int, int]:
    """Start the workers on one fresh key: (all admission times in us, all script calls, the
    end of the run in us)."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    start_at = time.time() + 1.5  # every worker is connected before the first admission
    args = [sys.executable, __file__, "worker", "--prefix", prefix, "--limit", str(limit),
            "--window", str(window_s), "--seconds", str(seconds), "--start-at", str(start_at),
            "--mode", mode]
    workers = [subprocess.Popen(args, stdout=subprocess.PIPE) for _ in range(processes)]
    times: list[int] = []
    calls = 0
    for worker in workers:
        out, _ = worker.communicate(timeout=seconds + 60)
        if worker.returncode != 0:
            raise RuntimeError(f"worker failed with {worker.returncode}")
        result = json.loads(out)
        times += result["admitted"]
        calls += result["calls"]
    return times, calls, int((start_at + seconds) * 1_000_000)


def measure(processes: int, limit: int, window_s: float, seconds: float, mode: str) -> Figures:
    times, calls, until_us = run_workers(processes, limit, window_s, seconds, mode)
    window_us = int(window_s * 1_000_000)
    shares = use_after_first_window(times, limit, window_us, until_us) or [0.0]
    return Figures(len(times), calls, most_in_window(times, window_us),
                   sum(shares) / len(shares), shares[len(shares) // 20], shares[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", default="bench", choices=["bench", "worker"])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--mode", choices=["sleep", "hammer"], default="sleep")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--start-at", type=float, default=0.0)
    opts = parser.parse_args()
    if opts.role == "worker":
        print(json.dumps(asyncio.run(work(opts.prefix, opts.limit, opts.window, opts.seconds,
                                          opts.start_at, opts.mode))))
        return
    print(f"{opts.processes} processes, {opts.limit}/{opts.window:g}s, {opts.seconds:g}s, "
          f"{opts.mode} mode, Redis {REDIS_URL}")
    print(measure(opts.processes, opts.limit, opts.window, opts.seconds, opts.mode)
          .show(opts.limit))


if __name__ == "__main__":
    main()
