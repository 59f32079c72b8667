"""Redis paused (SIGSTOP of a redis-server of the test's own, past the client's socket time-out)
and then flushed, under load, with the service as a subprocess: it serves on in its degraded
mode, says so in its health file, recovers, and loses nothing; what the flush costs (ledger
records and caches gone) shows as duplicates in the ledger. Redis killed and restarted is
tests/store/test_degraded.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from llm_consumer.settings import Settings
from tests.fakes.openai_server import reply
from tests.faults.ledger import (
    FAULT_ENV,
    Ledger,
    assert_queues_empty,
    collect,
    new_ids,
    provider_calls,
    publish_requests,
    settle,
    start_process,
    work_consumers,
)
from tests.store.conftest import RedisServer

pytestmark = pytest.mark.slow

# Enough that the load outlasts the pause and the flush: the service serves on at close to its
# full rate while Redis hangs (about 24 a second here), so the flush still lands mid-load.
REQUESTS = 400
TEST_BUDGET_S = 200.0  # every step below is bounded; this bounds the whole
PAUSE_S = 10.0  # the service's Redis socket time-out is 5 s, its heartbeat every 1.7 s


async def watch_health(path: Path, seen: list[tuple[float, str]]) -> None:
    """Every status change of the service's health file."""
    while True:
        with contextlib.suppress(OSError, ValueError):
            status = str(orjson.loads(path.read_bytes()).get("status"))
            if not seen or seen[-1][1] != status:
                seen.append((time.monotonic(), status))
        await asyncio.sleep(0.1)


async def test_redis_paused_then_flushed_mid_load(
    own_redis: RedisServer, settings_factory: Callable[..., Settings], fake_openai: Any,
    tmp_path: Path,
) -> None:
    assert own_redis.process is not None
    settings = settings_factory(redis_url=own_redis.url)
    ids = new_ids(REQUESTS)
    fake_openai.responder = lambda body: reply(None, delay_s=0.25)
    health = tmp_path / "health.json"
    service = await start_process(settings, fake_openai, **FAULT_ENV, CONCURRENCY="6",
                                  HEALTH_FILE=str(health),
                                  INSTANCE_ID=f"faults-redis-{ids[0][:6]}")
    statuses: list[tuple[float, str]] = []
    watcher = asyncio.create_task(watch_health(health, statuses))
    client = aioredis.from_url(own_redis.url, socket_timeout=5, socket_connect_timeout=5)
    try:
        async with asyncio.timeout(TEST_BUDGET_S), collect(settings) as results:
            await publish_requests(settings, ids)
            await results.wait_until(lambda: len(results.generated) >= REQUESTS // 8,
                                     timeout_s=30)
            os.kill(own_redis.process.pid, signal.SIGSTOP)
            paused_at = time.monotonic()
            done_before_pause = len(results.generated)
            try:
                await asyncio.sleep(PAUSE_S)
            finally:
                os.kill(own_redis.process.pid, signal.SIGCONT)
            resumed_at = time.monotonic()
            done_during_pause = len(results.generated) - done_before_pause
            await results.wait_until(
                lambda: len(results.generated) >= done_before_pause + done_during_pause + 10,
                timeout_s=30)
            keys_before_flush = await client.dbsize()
            await client.flushall()
            flushed_at = time.monotonic()
            done_before_flush = len(results.generated)
            await results.wait_generated(ids, timeout_s=90)
            await settle(settings, results, timeout_s=30)
            await wait_for_status(statuses, "ok", after=resumed_at)
            consumers = await work_consumers(settings)
            changes = [(round(at - paused_at, 1), s) for at, s in statuses]
            ledger = Ledger("redis paused (SIGSTOP) then flushed", ids, results,
                            provider_calls(fake_openai, ids), paused_at,
                            notes={"pause_s": PAUSE_S,
                                   "results_before_pause": done_before_pause,
                                   "results_during_pause": done_during_pause,
                                   "results_before_flush": done_before_flush,
                                   "keys_flushed": keys_before_flush,
                                   "flush_after_pause_s": round(flushed_at - paused_at, 1),
                                   "health_changes (s after pause, status)": changes,
                                   "work_queue_consumers": consumers,
                                   "service_outcomes": dict(service.outcomes())})
            ledger.check(max_calls_per_request=2, max_duplicate_results=len(ids))
            await assert_queues_empty(settings)
            assert done_before_flush < len(ids), "the flush landed after the load"
            assert any(s == "degraded" for at, s in statuses if at >= paused_at), changes
            assert statuses[-1][1] == "ok", changes
            assert consumers == 1
    finally:
        watcher.cancel()
        exit_code = await service.stop()
        # The service is stopped first and the close is bounded: twice in full-suite runs this
        # test stalled after the flush, idle, with the service still up (cause not found). The
        # budget above and this bound make such a stall a failure instead of a hung CI run.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.aclose(), 5)
    assert exit_code == 0, service.tail()


async def wait_for_status(statuses: list[tuple[float, str]], wanted: str, *, after: float,
                          timeout_s: float = 30) -> None:
    """Until the status changed to `wanted` after `after` (and is still that)."""
    deadline = time.monotonic() + timeout_s
    while not (statuses and statuses[-1][1] == wanted and statuses[-1][0] >= after):
        if time.monotonic() > deadline:
            return  # the assertions name what was seen
        await asyncio.sleep(0.1)
