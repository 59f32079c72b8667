"""Faults of the service itself: a worker killed mid-request, a provider call that hangs. Each
test ends with a per-request ledger (printed; `pytest -s` shows it): nothing lost, nothing
unexpected, duplicates bounded, and the recovery time. The broker's faults are in
test_broker_faults.py, Redis's in test_redis_faults.py, the provider's storms in
test_provider_storms.py, load and SIGTERM under load in test_load.py."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from llm_consumer.bus.topology import build_topology
from llm_consumer.events import catalog
from llm_consumer.settings import Settings
from tests.conftest import Service
from tests.fakes.openai_server import hang, reply
from tests.faults.ledger import (
    Ledger,
    assert_queues_empty,
    collect,
    new_ids,
    provider_calls,
    publish_requests,
    settle,
    start_process,
    wait_for_calls,
)

pytestmark = pytest.mark.slow


async def test_kill_9_mid_request_loses_nothing(settings_factory: Callable[..., Settings],
                                                fake_openai: Any) -> None:
    settings = settings_factory(lease_s=5)
    ids = new_ids(20)
    fake_openai.script(*[reply(None, delay_s=1.0) for _ in range(60)])
    # SINGLEFLIGHT_WAIT_S: the killed leader's single-flight claim in Redis lives that long and
    # the redelivered copy of the same request follows it until then (default 60 s).
    shared = {"LEASE_S": "5", "CONCURRENCY": "4", "SHUTDOWN_GRACE_S": "5",
              "SINGLEFLIGHT_WAIT_S": "5"}
    first = await start_process(settings, fake_openai, INSTANCE_ID=f"faults-a-{ids[0][:6]}",
                                **shared)
    async with collect(settings) as results:
        await publish_requests(settings, ids)
        await wait_for_calls(fake_openai, 10)  # two rounds done, the third in flight
        in_flight_at_kill = len(fake_openai.chat_requests) - len(
            results.of_type(catalog.CONTENT_GENERATED))
        first.process.kill()
        killed_at = time.monotonic()
        assert await asyncio.wait_for(first.process.wait(), 10) == -signal.SIGKILL
        done_before_kill = len({s.event["data"]["request_id"]
                                for s in results.of_type(catalog.CONTENT_GENERATED)})
        second = await start_process(settings, fake_openai, INSTANCE_ID=f"faults-b-{ids[0][:6]}",
                                     **shared)
        try:
            with contextlib.suppress(TimeoutError):  # the ledger below names what is missing
                await results.wait_until(
                    lambda: all(results.of_type(catalog.CONTENT_GENERATED, r) for r in ids),
                    timeout_s=45)
            await settle(settings, results)
        finally:
            second.process.send_signal(signal.SIGTERM)
            exit_code = await asyncio.wait_for(second.process.wait(), 30)
        ledger = Ledger("kill -9 mid-request", ids, results, provider_calls(fake_openai, ids),
                        killed_at, notes={"results_before_kill": done_before_kill,
                                          "calls_in_flight_at_kill": in_flight_at_kill,
                                          "second_process_exit": exit_code})
        ledger.check(max_calls_per_request=2, max_duplicate_results=4)
        await assert_queues_empty(settings)
    assert exit_code == 0


async def test_hung_provider_call_times_out_alone(
    openai_service: Callable[..., Awaitable[Service]], fake_openai: Any,
) -> None:
    service = await openai_service(request_deadline_s=1.0, max_attempts=2)
    settings = service.settings
    hung, *neighbours = new_ids(11)
    warm, late = new_ids(1), new_ids(1)
    bindings = (catalog.CONTENT_GENERATED, catalog.GENERATION_FAILED, catalog.JOB_STATUS)
    async with collect(settings, bindings) as results:
        # The first request of a fresh service spends ~1 s before its provider call (cold
        # start); warm up first, or the 1 s deadline fires before the hang is even reached.
        await publish_requests(settings, warm)
        await results.wait_until(lambda: bool(results.of_type(catalog.CONTENT_GENERATED, warm[0])),
                                 timeout_s=15)
        fake_openai.script(hang(30))
        await publish_requests(settings, [hung])
        await wait_for_calls(fake_openai, 2)
        hung_at = time.monotonic()
        await publish_requests(settings, neighbours)
        await results.wait_until(
            lambda: all(results.of_type(catalog.CONTENT_GENERATED, r) for r in [hung, *neighbours]),
            timeout_s=30)
        neighbours_done = max(min(s.at for s in results.of_type(catalog.CONTENT_GENERATED, r))
                              for r in neighbours)
        statuses = [s.event["data"] for s in results.of_type(catalog.JOB_STATUS, hung)]
        timeouts = [d for d in statuses if d["state"] == "deferred"]
        assert timeouts and timeouts[0]["attempt"] == 1, statuses
        # The neighbours did not wait for the hung call's deadline.
        assert neighbours_done - hung_at < 1.0, neighbours_done - hung_at
        # The consuming channel survived: the service still takes new work.
        await publish_requests(settings, late)
        await results.wait_until(lambda: bool(results.of_type(catalog.CONTENT_GENERATED, late[0])),
                                 timeout_s=15)
        await settle(settings, results, timeout_s=10)
        state = await assert_queues_empty(settings)
        topology = build_topology(settings.queue_prefix, settings.hub_exchange)
        everyone = [*warm, hung, *neighbours, *late]
        calls = provider_calls(fake_openai, everyone)
        ledger = Ledger("hung provider call", everyone, results, calls, hung_at,
                        notes={"neighbours_done_after_s": round(neighbours_done - hung_at, 2),
                               "hung_request_statuses": [d["state"] for d in statuses],
                               "work_queue_consumers": state[topology.work.name][1]})
        ledger.check(max_calls_per_request=2, max_duplicate_results=0)
        assert calls[hung] == 2, "the hung call and its retry"
        assert all(calls[r] == 1 for r in [*warm, *neighbours, *late])
        assert state[topology.work.name][1] == 1
