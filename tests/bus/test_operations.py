"""Operations: heartbeats, `health` and `probe`, Prometheus metrics, priorities."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any

import aio_pika
import orjson

from llm_consumer import metrics
from llm_consumer.bus.topology import build_topology
from llm_consumer.client import build_request
from llm_consumer.events import catalog
from llm_consumer.events.results import ServiceHeartbeat
from tests.cli.test_dlq import cli_env
from tests.cli.test_inject import run_cli
from tests.conftest import HUB_URL, Service, token
from tests.hub import publish_raw, tap
from tests.ports import free_port

SHEET = {"context": {"name": "Mira", "class": "Rogue"}}



async def test_heartbeats_report_components_and_load(openai_service: Any,
                                                     tmp_path: Path) -> None:
    health_file = tmp_path / "health.json"
    service: Service = await openai_service(heartbeat_every_s=0.3,
                                            health_file=str(health_file))
    async with tap(service.settings, catalog.SERVICE_HEARTBEAT) as hub:
        await service.request("world.location", SHEET)
        beats = await hub.wait_for(catalog.SERVICE_HEARTBEAT, count=2)
        later = await hub.wait_for(catalog.SERVICE_HEARTBEAT, count=len(beats) + 1)
    beat = ServiceHeartbeat.model_validate(later[-1]["data"])
    assert beat.instance == service.settings.instance_id
    assert beat.status == "ok"
    assert beat.components["broker"] == "ok" and beat.components["cache"] == "ok"
    assert beat.components["provider:text-openai"] == "ok"
    assert beat.components["provider:image-getimg"] == "disabled"
    assert beat.metrics.processed >= 1
    env = cli_env(service.settings) | {"HEALTH_FILE": str(health_file)}
    code, stdout, _ = await run_cli(env, "probe")
    assert code == 0 and stdout.startswith("ok:")


async def test_heartbeats_follow_the_queue_depths(openai_service: Any) -> None:
    """`llm_queue_depth` is read from the broker at every heartbeat, not once."""
    service: Service = await openai_service(heartbeat_every_s=0.2)
    dead = build_topology(service.settings.queue_prefix, service.settings.hub_exchange).dead.name

    def depth() -> float | None:
        return metrics.REGISTRY.get_sample_value("llm_queue_depth", {"queue": dead})

    async def reported(count: int) -> None:
        for _ in range(100):
            if depth() == count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"llm_queue_depth of {dead} is {depth()}, not {count}")

    await reported(0)
    connection = await aio_pika.connect(HUB_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for _ in range(3):
            await channel.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=dead)
        await reported(3)
        await (await channel.declare_queue(dead, passive=True)).purge()
    await reported(0)


async def test_health_command_lists_instances_and_fails_without_any(
        openai_service: Any, settings_factory: Any) -> None:
    service: Service = await openai_service(heartbeat_every_s=0.3)
    env = cli_env(service.settings) | {"REDIS_URL": service.settings.redis_url}
    code, stdout, stderr = await run_cli(env, "health", "--wait", "2")
    assert code == 0, stdout + stderr
    assert service.settings.instance_id in stdout and "broker" in stdout
    lonely = cli_env(settings_factory())
    code, _, stderr = await run_cli(lonely, "health", "--wait", "1")
    assert code == 1 and "no heartbeat" in stderr


async def test_probe_fails_on_a_stale_file(tmp_path: Path, settings_factory: Any) -> None:
    stale = tmp_path / "health.json"
    stale.write_bytes(orjson.dumps({"time": 0, "status": "ok", "metrics": {}}))
    env = cli_env(settings_factory()) | {"HEALTH_FILE": str(stale)}
    code, _, stderr = await run_cli(env, "probe")
    assert code == 1 and "last heartbeat" in stderr


async def test_prometheus_metrics_count_requests(openai_service: Any) -> None:
    port = free_port()
    service: Service = await openai_service(metrics_port=port)
    await service.request("campaign.quest", SHEET)
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read())
    text = body.decode()
    assert 'llm_requests_total{kind="campaign.quest",outcome="completed"}' in text
    assert "llm_request_duration_seconds_bucket" in text
    assert 'llm_tokens_total{direction="completion",model="gpt-5-nano"}' in text
    assert 'llm_queue_depth{queue="' in text or "llm_in_flight" in text


async def test_priority_9_overtakes_200_queued_requests(openai_service: Any,
                                                        fake_openai: Any) -> None:
    service: Service = await openai_service(concurrency=1)
    await service.close()  # the queues stay; fill them while nobody consumes
    headers = {"authorization": f"Bearer {token()}"}
    for _ in range(200):
        body = orjson.dumps(build_request("world.location", {**SHEET, "cache": False}))
        await publish_raw(service.settings, body, routing_key="content.requested",
                          headers=headers, priority=0)
    urgent = build_request("world.location", {**SHEET, "cache": False})
    await publish_raw(service.settings, orjson.dumps(urgent), routing_key="content.requested",
                      headers=headers, priority=9)
    async with tap(service.settings, catalog.CONTENT_GENERATED) as hub:
        again = Service(service.settings)
        await again.start()
        try:
            await hub.wait_for(catalog.CONTENT_GENERATED, urgent["id"], timeout_s=60)
            order = [e["data"]["request_id"] for e in hub.of_type(catalog.CONTENT_GENERATED)]
        finally:
            await again.close()
    assert order.index(urgent["id"]) < 3, f"served at position {order.index(urgent['id'])}"
