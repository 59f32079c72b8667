"""Batch delivery on the real Redis Cluster: every batch key shares the `{batch}` hash tag, so
its scripts (add, take, move, leases) run there as on one server."""

from __future__ import annotations

from typing import Any

from llm_consumer.events import catalog
from tests.bus.test_batch import FAST, batch_request, cancel, send, states, until
from tests.cluster.redis_cluster import RedisCluster
from tests.conftest import Service
from tests.fakes.openai_server import FakeOpenAI
from tests.hub import tap


async def test_a_batch_on_the_cluster(openai_service: Any, fake_openai: FakeOpenAI,
                                      redis_cluster: RedisCluster) -> None:
    service: Service = await openai_service(**FAST, batch_max_requests=3, redis_mode="cluster",
                                            redis_url=redis_cluster.url)
    fake_openai.batch_ending = "hold"
    requests = [batch_request("character.backstory"), batch_request("world.location"),
                batch_request("campaign.quest")]
    async with tap(service.settings) as hub:
        for request in requests:
            await send(service, request)
        await until(lambda: any(b["status"] == "in_progress"
                                for b in fake_openai.batches.values()))
        await cancel(service, requests[2]["id"], subject="alice")
        await hub.wait_for(catalog.GENERATION_FAILED, requests[2]["id"])
        fake_openai.batch_ending = "completed"
        for request in requests[:2]:
            await hub.wait_for(catalog.CONTENT_GENERATED, request["id"])
        await hub.wait_for(catalog.JOB_STATUS, requests[1]["id"], count=3)
    for request in requests[:2]:
        assert states(hub, request["id"]) == ["running", "batched", "completed"]
        assert len(hub.of_type(catalog.CONTENT_GENERATED, request["id"])) == 1
    assert states(hub, requests[2]["id"]) == ["running", "batched", "cancelled"]
    assert hub.of_type(catalog.CONTENT_GENERATED, requests[2]["id"]) == []
    assert len(fake_openai.batches) == 1
