"""Worker processes that share one rate limit in the real Redis, for test_limiter_exact.

Each worker runs the service's own admission (`limits.lua` through `Admission`) on one scope
and records the Redis server time of every admission and of every refusal; in `sleep` mode a
refused worker waits the `retry_after` it was given (as the service does), in `hammer` mode it
asks again at once. The refusal times let a test judge the limiter itself: a refusal is right
only when the window held the whole limit at that moment, however slowly a loaded machine
lets the workers ask.

    .venv/bin/python tests/store/limiter_workers.py --prefix p: --limit 45 --window 3 ...
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


def scope(limit: int, window_s: float) -> Scope:
    return Scope("operation", "limiter-test", "count", limit, window_s)


@dataclass(frozen=True, slots=True)
class Run:
    admitted_us: list[int]  # Redis server times of every admission, all workers
    refused_us: list[int]  # and of every refusal


async def work(prefix: str, limit: int, window_s: float, seconds: float, start_at: float,
               mode: str) -> dict[str, list[int]]:
    redis = aioredis.from_url(REDIS_URL)
    admission = Admission(redis, Keys(prefix), RedisHealth(), replicas_hint=1, prices={})
    ask = Ask("limiter-test", "", (scope(limit, window_s),))
    await asyncio.sleep(max(0.0, start_at - time.time()))
    stop = time.monotonic() + seconds
    admitted: list[int] = []
    refused: list[int] = []
    while time.monotonic() < stop:
        verdict = await admission.admit(ask)
        if isinstance(verdict, Admitted):
            admitted.append(verdict.at_us)
        elif isinstance(verdict, Limited):
            refused.append(verdict.at_us)
            if mode == "sleep":
                await asyncio.sleep(min(verdict.retry_after_s,
                                        max(0.0, stop - time.monotonic())))
    await redis.aclose()
    return {"admitted": admitted, "refused": refused}


def run_workers(processes: int, limit: int, window_s: float, seconds: float,
                mode: str) -> Run:
    """Start the workers on one fresh key and gather what they saw."""
    prefix = f"limiter-test-{uuid.uuid4().hex[:8]}:"
    start_at = time.time() + 1.5  # every worker is connected before the first admission
    args = [sys.executable, __file__, "--prefix", prefix, "--limit", str(limit),
            "--window", str(window_s), "--seconds", str(seconds), "--start-at", str(start_at),
            "--mode", mode]
    workers = [subprocess.Popen(args, stdout=subprocess.PIPE) for _ in range(processes)]
    admitted: list[int] = []
    refused: list[int] = []
    for worker in workers:
        out, _ = worker.communicate(timeout=seconds + 120)
        if worker.returncode != 0:
            raise RuntimeError(f"worker failed with {worker.returncode}")
        result = json.loads(out)
        admitted += result["admitted"]
        refused += result["refused"]
    return Run(sorted(admitted), sorted(refused))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--limit", type=int, required=True)
    parser.add_argument("--window", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--start-at", type=float, required=True)
    parser.add_argument("--mode", choices=["sleep", "hammer"], required=True)
    opts = parser.parse_args()
    print(json.dumps(asyncio.run(work(opts.prefix, opts.limit, opts.window, opts.seconds,
                                      opts.start_at, opts.mode))))


if __name__ == "__main__":
    main()
