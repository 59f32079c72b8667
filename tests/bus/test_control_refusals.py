"""Every replica gets a copy of each control event (a job may run on any of them). A refused
one - a bad token, no token - is answered once: one `generation.failed` and one
dead letter, however many replicas there are."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from llm_consumer.bus.topology import build_topology
from llm_consumer.client import build_request
from llm_consumer.events import catalog
from tests.conftest import Service
from tests.hub import publish_raw, queue_depth, tap


async def test_a_refused_control_event_is_answered_once_by_two_replicas(
        openai_service: Any) -> None:
    first: Service = await openai_service()
    settings = first.settings
    second = Service(settings.model_copy(update={"instance_id": settings.instance_id + "-b"}))
    await second.start()
    dead = build_topology(settings.queue_prefix, settings.hub_exchange).dead.name
    try:
        forged = build_request("job.cancel", {"request_id": "00000000-0000-4000-8000-00000000"
                                                            "0001"})
        no_scope = build_request("job.cancel", {"request_id": "00000000-0000-4000-8000-0000"
                                                              "00000002"})
        async with tap(settings, catalog.GENERATION_FAILED) as hub:
            await publish_raw(settings, orjson.dumps(forged), routing_key=catalog.JOB_CANCEL,
                              headers={"authorization": "Bearer not-a-token"})
            await publish_raw(settings, orjson.dumps(no_scope), routing_key=catalog.JOB_CANCEL)
            [bad_token] = await hub.wait_for(catalog.GENERATION_FAILED, forged["id"])
            [no_token] = await hub.wait_for(catalog.GENERATION_FAILED, no_scope["id"])
            for _ in range(100):  # both replicas have had their copies by now
                if await queue_depth(settings, dead) >= 2:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # room for a second answer, were there one
        assert bad_token["data"]["error"]["code"] == "unauthorized"
        assert no_token["data"]["error"]["code"] == "unauthorized"
        assert len(hub.of_type(catalog.GENERATION_FAILED)) == 2
        assert await queue_depth(settings, dead) == 2, "one dead letter each"
    finally:
        await second.close()
