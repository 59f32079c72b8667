"""The broker goes away under load: its own RabbitMQ node killed with -9 and restarted on the
same data, every connection closed by that node, and the shared broker cut off behind a TCP
blackhole. The service (a subprocess) reconnects by itself, its consumer comes back and no
request is lost. Each test ends with its ledger (`pytest -s` shows it)."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from llm_consumer.settings import Settings
from tests.conftest import HUB_URL
from tests.fakes.openai_server import reply
from tests.faults.ledger import (
    FAULT_ENV,
    Collector,
    Ledger,
    Process,
    assert_queues_empty,
    collect,
    new_ids,
    provider_calls,
    publish_requests,
    settle,
    start_process,
    work_consumers,
)
from tests.faults.proxy import FaultProxy
from tests.faults.rabbit_node import RabbitNode

pytestmark = pytest.mark.slow

REQUESTS = 60
CONCURRENCY = "6"
PROVIDER_DELAY_S = 0.3  # 60 requests, 6 at a time: ~3 s of work plus the fault


@dataclass
class UnderLoad:
    """The service (a subprocess) a quarter of the way through REQUESTS, ready for a fault."""

    settings: Settings
    url: str  # where the test publishes and collects
    ids: list[str]
    service: Process
    results: Collector
    fake_openai: Any

    async def recovered(self, name: str, fault_at: float, notes: dict[str, Any], *,
                        timeout_s: float = 60) -> tuple[Ledger, int]:
        """Wait for every result and a quiet queue; the ledger, and the work queue's
        consumers now (notes get them and the service's outcomes too)."""
        await self.results.wait_generated(self.ids, timeout_s=timeout_s)
        await settle(self.settings, self.results, timeout_s=30)
        consumers = await work_consumers(self.settings, url=self.url)
        ledger = Ledger(name, self.ids, self.results, provider_calls(self.fake_openai, self.ids),
                        fault_at, notes={**notes, "work_queue_consumers": consumers,
                                         "service_outcomes": dict(self.service.outcomes()),
                                         "service_errors": self.service.errors()})
        return ledger, consumers


@asynccontextmanager
async def under_load(settings: Settings, fake_openai: Any, name: str, *,
                     url: str = HUB_URL) -> AsyncIterator[UnderLoad]:
    """Start the service, publish REQUESTS and wait until a quarter have results; stop the
    service at the end (it must exit 0)."""
    ids = new_ids(REQUESTS)
    fake_openai.responder = lambda body: reply(None, delay_s=PROVIDER_DELAY_S)
    service = await start_process(settings, fake_openai, **FAULT_ENV, CONCURRENCY=CONCURRENCY,
                                  INSTANCE_ID=f"faults-{name}-{ids[0][:6]}")
    try:
        async with collect(settings, url=url) as results:
            await publish_requests(settings, ids, url=url)
            await results.wait_until(lambda: len(results.generated) >= REQUESTS // 4,
                                     timeout_s=30)
            yield UnderLoad(settings, url, ids, service, results, fake_openai)
    finally:
        exit_code = await service.stop()
    assert exit_code == 0, service.tail()


async def test_own_node_killed_and_restarted_mid_load(
    own_rabbit: RabbitNode, settings_factory: Callable[..., Settings], fake_openai: Any,
) -> None:
    url = own_rabbit.url
    async with under_load(settings_factory(message_hub_url=url), fake_openai, "kill-broker",
                          url=url) as load:
        calls_before = len(fake_openai.chat_requests)
        await own_rabbit.kill()
        killed_at = time.monotonic()
        done_before = len(load.results.generated)
        await own_rabbit.restart()
        down_s = time.monotonic() - killed_at
        ledger, consumers = await load.recovered(
            "own RabbitMQ node killed (-9) and restarted", killed_at,
            {"results_before_kill": done_before, "provider_calls_before_kill": calls_before,
             "node_down_s (kill to AMQP up again)": round(down_s, 2),
             "collector_reconnects": load.results.reconnects}, timeout_s=90)
        ledger.check(max_calls_per_request=2, max_duplicate_results=REQUESTS)
        await assert_queues_empty(load.settings, url=url)
        assert done_before < REQUESTS, "the kill landed after the load"
        assert consumers == 1, "the service consumes again"


async def test_own_node_closes_every_connection_mid_load(
    own_rabbit: RabbitNode, settings_factory: Callable[..., Settings], fake_openai: Any,
) -> None:
    url = own_rabbit.url
    async with under_load(settings_factory(message_hub_url=url), fake_openai, "close-all",
                          url=url) as load:
        # The node is this module's own: closing everything disturbs nobody else.
        await own_rabbit.close_all_connections()
        closed_at = time.monotonic()
        done_before = len(load.results.generated)
        ledger, consumers = await load.recovered(
            "own node closes every connection", closed_at,
            {"results_before_close_returned": done_before,
             "collector_reconnects": load.results.reconnects})
        ledger.check(max_calls_per_request=2, max_duplicate_results=REQUESTS)
        await assert_queues_empty(load.settings, url=url)
        assert load.results.reconnects >= 1, "the close did not reach the collector's connection"
        assert done_before < REQUESTS, "the close landed after the load"
        assert consumers == 1, "the service consumes again"


HEARTBEAT_S = 2
BLACKHOLE_S = 12.0  # past both sides' heartbeat time-outs (the broker's 2, aiormq's 3 beats)
RESET_S = 6.0  # past aio-pika's 5 s reconnect interval: at least one refused attempt


def with_heartbeat(url: str, seconds: int) -> str:
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query = [(k, v) for k, v in query if k != "heartbeat"] + [("heartbeat", str(seconds))]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def through_proxy(settings_factory: Callable[..., Settings], proxy: FaultProxy) -> Settings:
    """Only the service talks through the proxy; the collector and the publisher go straight
    to the shared broker, whose other clients a proxy fault never touches."""
    return settings_factory(message_hub_url=with_heartbeat(proxy.url(HUB_URL), HEARTBEAT_S))


async def test_network_blackhole_then_heal(
    broker_proxy: FaultProxy, settings_factory: Callable[..., Settings], fake_openai: Any,
) -> None:
    async with under_load(through_proxy(settings_factory, broker_proxy), fake_openai,
                          "blackhole") as load:
        try:
            links_before = broker_proxy.accepted
            broker_proxy.blackhole()
            cut_at = time.monotonic()
            done_before = len(load.results.generated)
            await asyncio.sleep(BLACKHOLE_S)
            consumers_during = await work_consumers(load.settings)
            done_during = len(load.results.generated) - done_before
            broker_proxy.heal()
            healed_at = time.monotonic()
            ledger, consumers = await load.recovered(
                "network blackhole (proxy) then heal", cut_at,
                {"blackhole_s": BLACKHOLE_S, "heartbeat_s": HEARTBEAT_S,
                 "results_before_cut": done_before, "results_during_blackhole": done_during,
                 "work_queue_consumers_during": consumers_during,
                 "proxy_connections_opened_since_cut": broker_proxy.accepted - links_before})
            ledger.notes["recovery_after_heal_s"] = round(
                max(0.0, ledger.recovery_s - (healed_at - cut_at)), 2)
            ledger.check(max_calls_per_request=2, max_duplicate_results=REQUESTS)
            await assert_queues_empty(load.settings)
            assert done_before < REQUESTS, "the blackhole fell after the load"
            assert consumers_during == 0, "the broker dropped the dead link's consumer"
            assert broker_proxy.accepted > links_before, "the service reconnected"
            assert consumers == 1, "the service consumes again"
        finally:
            broker_proxy.heal()


async def test_network_reset_mid_load(
    broker_proxy: FaultProxy, settings_factory: Callable[..., Settings], fake_openai: Any,
) -> None:
    """Every connection through the proxy cut with a TCP reset, and new ones refused for a
    few seconds: the service reconnects once the path is back."""
    async with under_load(through_proxy(settings_factory, broker_proxy), fake_openai,
                          "reset") as load:
        try:
            links_before = broker_proxy.accepted
            broker_proxy.reset()
            cut_at = time.monotonic()
            done_before = len(load.results.generated)
            await asyncio.sleep(RESET_S)
            refused = broker_proxy.accepted - links_before
            broker_proxy.heal()
            healed_at = time.monotonic()
            ledger, consumers = await load.recovered(
                "network reset (proxy), refused for a while, then healed", cut_at,
                {"refused_s": RESET_S, "connections_reset": broker_proxy.resets,
                 "reconnects_refused": refused, "results_before_reset": done_before})
            ledger.notes["recovery_after_heal_s"] = round(
                max(0.0, ledger.recovery_s - (healed_at - cut_at)), 2)
            ledger.check(max_calls_per_request=2, max_duplicate_results=REQUESTS)
            await assert_queues_empty(load.settings)
            assert done_before < REQUESTS, "the reset came after the load"
            assert broker_proxy.resets >= 1
            assert broker_proxy.accepted > links_before + refused, "the service reconnected"
            assert consumers == 1, "the service consumes again"
        finally:
            broker_proxy.heal()
