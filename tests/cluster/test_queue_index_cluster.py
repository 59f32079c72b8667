"""Queue status and re-prioritizing on a real Redis Cluster: the index's keys share one hash
tag, so each of its scripts runs on one shard."""

from __future__ import annotations

import json
from typing import Any

from llm_consumer.client import build_request
from llm_consumer.events import catalog
from tests.bus.test_queue_index import (
    NO_LIMITS,
    prioritize,
    publish_all,
    status,
    status_until,
)
from tests.cluster.redis_cluster import RedisCluster
from tests.conftest import ALL_SCOPES, Service, token
from tests.fakes.openai_server import Reply
from tests.hub import tap


async def test_a_queued_request_moves_ahead_on_the_cluster(
        openai_service: Any, fake_openai: Any, redis_cluster: RedisCluster) -> None:
    fake_openai.responder = lambda body: Reply(
        None, delay_s=120 if "Blocker" in json.dumps(body) else 0)
    # The blocker holds the one worker until its call times out (then it waits for a retry):
    # long enough to look at the queue, short enough to see who is served next.
    service: Service = await openai_service(
        redis_mode="cluster", redis_url=redis_cluster.url, concurrency=1,
        openai_request_timeout=10, heartbeat_every_s=0.5, shutdown_grace_s=0.5, **NO_LIMITS)
    settings = service.settings
    alice = token("llm:content", subject="alice")
    blocker = build_request("world.location", {"context": {"name": "Blocker"}, "cache": False})
    queued = [build_request("world.location", {"context": {"name": f"alice-{i}"},
                                               "cache": False}) for i in range(4)]
    await publish_all(settings, [blocker], token("llm:content", subject="carol"), 0)
    await publish_all(settings, queued, alice, 0)
    before = await status_until(settings, token(*ALL_SCOPES, subject="ops"),
                                lambda s: s.queued == 4 and s.in_flight == 1)
    assert [(b.priority, b.queued) for b in before.bands] == [(0, 4)]
    mine = await status(settings, alice, queued[3]["id"])
    assert mine.request is not None and mine.request.position == 3
    answer = await prioritize(settings, alice, queued[3]["id"], 9)
    assert (answer["data"]["outcome"], answer["data"]["position"]) == ("accepted", 0)
    after = await status(settings, alice, queued[3]["id"])
    assert after.request is not None and (after.request.priority, after.request.position) == (
        9, 0)
    assert after.index == "ok"
    async with tap(settings, catalog.CONTENT_GENERATED) as hub:
        done = await hub.wait_for(catalog.CONTENT_GENERATED, count=1, timeout_s=60)
    assert done[0]["data"]["request_id"] == queued[3]["id"]  # served first of alice's
