"""A 3-node RabbitMQ cluster with quorum queues (a replica on every node): the node the service
is connected to is killed (`kill -9`) under steady load and restarted. The service (a
subprocess, MESSAGE_HUB_URL naming all three nodes) comes back on a surviving node by itself;
no request the broker confirmed is lost. The ledger is printed (`pytest -s`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiormq.exceptions import DeliveryError

from llm_consumer.settings import Settings
from tests.cluster.redis_cluster import RedisCluster
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
from tests.faults.rabbit_node import RabbitCluster

FIRST, SECOND = 60, 30  # published before the kill, and while the node is down
PROVIDER_DELAY_S = 0.3


def node_url(cluster: RabbitCluster, index: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{cluster.nodes[index].port}/"


def queue_members(cluster: RabbitCluster, queue: str) -> list[str]:
    """The nodes holding a replica of quorum queue `queue`."""
    listed = cluster.nodes[2].ctl("list_queues", "name", "members", "--formatter", "json")
    found = [q for q in json.loads(listed.stdout or "[]") if q["name"] == queue]
    return list(found[0]["members"]) if found else []


async def publish_until_confirmed(settings: Settings, request_ids: list[str],
                                  url: str) -> int:
    """Publish each request until the broker confirms it, as a careful publisher does (while
    the work queue elects a new leader the broker nacks); how many nacks there were."""
    nacks = 0
    pending = list(request_ids)
    while pending:
        request_id = pending.pop(0)
        try:
            await publish_requests(settings, [request_id], url=url)
        except DeliveryError:
            nacks += 1
            pending.append(request_id)
            await asyncio.sleep(0.2)  # the queue elects a leader meanwhile
    return nacks


async def test_a_node_killed_and_restarted_under_load_loses_nothing(
        rabbit_cluster: RabbitCluster, redis_cluster: RedisCluster,
        settings_factory: Callable[..., Settings], fake_openai: Any) -> None:
    """On both clusters: the job ledger, cache and limits live in the Redis Cluster."""
    settings = settings_factory(message_hub_url=rabbit_cluster.url, queue_type="quorum",
                                redis_mode="cluster", redis_url=redis_cluster.url)
    survivor = node_url(rabbit_cluster, 2)  # the test publishes and collects here
    victim = rabbit_cluster.nodes[0]  # the service connects to the first node listed
    ids, later = new_ids(FIRST), new_ids(SECOND)
    fake_openai.responder = lambda body: reply(None, delay_s=PROVIDER_DELAY_S)
    service = await start_process(settings, fake_openai, **FAULT_ENV, CONCURRENCY="6",
                                  QUEUE_TYPE="quorum", REDIS_MODE="cluster",
                                  INSTANCE_ID=f"cluster-{ids[0][:6]}")
    try:
        members = await asyncio.to_thread(queue_members, rabbit_cluster,
                                          f"{settings.queue_prefix}requests")
        assert sorted(members) == sorted(n.name for n in rabbit_cluster.nodes), (
            "a replica of the work queue on every node")
        async with collect(settings, url=survivor) as results:
            await publish_requests(settings, ids, url=survivor)
            await results.wait_until(lambda: len(results.generated) >= FIRST // 4, timeout_s=60)
            done_before = len(results.generated)
            await victim.kill()
            killed_at = time.monotonic()
            nacks = await publish_until_confirmed(settings, later, node_url(rabbit_cluster, 1))
            await victim.restart()
            back_s = time.monotonic() - killed_at
            everything = ids + later
            await results.wait_generated(everything, timeout_s=90)
            await settle(settings, results, timeout_s=30)
            consumers = await work_consumers(settings, url=survivor)
            ledger = Ledger("RabbitMQ cluster: the service's node killed (-9) and restarted",
                            everything, results, provider_calls(fake_openai, everything),
                            killed_at, notes={
                                "confirmed_before_kill": FIRST, "confirmed_while_down": SECOND,
                                "nacked_while_the_queue_elected_a_leader": nacks,
                                "results_before_kill": done_before,
                                "node_back_s (kill to AMQP up again)": round(back_s, 1),
                                "work_queue_consumers": consumers,
                                "service_outcomes": dict(service.outcomes())})
            ledger.check(max_calls_per_request=2, max_duplicate_results=len(everything))
            await assert_queues_empty(settings, url=survivor)
            assert done_before < FIRST, "the kill landed before the load was done"
            assert consumers == 1, "the service consumes again"
    finally:
        exit_code = await service.stop()
    assert exit_code == 0, service.tail()
