"""The documents' latency targets measured on real traffic: a provider slower than the text
target lowers the text share in `service.heartbeat` and in `llm-consumer health`, one
`slo.warning` is published for the window, and the time histograms split each request into
queue wait, provider time and service overhead."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from llm_consumer.events import catalog
from llm_consumer.events.results import ServiceHeartbeat, SloWarning
from tests.cli.test_dlq import cli_env
from tests.cli.test_inject import run_cli
from tests.conftest import Service
from tests.fakes.openai_server import reply, server_error
from tests.hub import Tap, tap
from tests.images.conftest import fake_images, image_service  # noqa: F401 (fixtures)
from tests.ports import free_port

DELAY_S = 0.3  # each provider answer
TARGET_S = 0.2  # the text target of this test: every answer misses it
REQUESTS = 5
KIND = "world.environment"
PARTS = ("llm_queue_wait_seconds", "llm_provider_seconds", "llm_service_overhead_seconds")


async def scrape(port: int, kind: str = KIND) -> dict[tuple[str, str], float]:
    """Sum and count of each part's histogram for `kind`, from /metrics as Prometheus sees
    it."""
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read())
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.labels.get("kind") == kind and sample.name.endswith(("_sum", "_count")):
                found[(sample.name.rsplit("_", 1)[0], sample.name.rsplit("_", 1)[1])] = (
                    sample.value)
    return found


async def beat_with(hub: Tap, answered: int, target: str = "text") -> ServiceHeartbeat:
    """The first heartbeat that counts `answered` requests of `target` (then one more
    heartbeat, so that anything published with the last request's settling has gone out)."""
    seen = 0
    while True:
        beats = await hub.wait_for(catalog.SERVICE_HEARTBEAT, count=seen + 1)
        seen = len(beats)
        beat = ServiceHeartbeat.model_validate(beats[-1]["data"])
        if beat.metrics.slo[target].requests >= answered:
            await hub.wait_for(catalog.SERVICE_HEARTBEAT, count=seen + 1)
            return beat


async def test_a_slow_provider_lowers_the_share_and_warns_once(
        openai_service: Any, fake_openai: Any) -> None:
    fake_openai.responder = lambda body: reply(delay_s=DELAY_S)
    port = free_port()
    service: Service = await openai_service(
        slo_targets_s={"text": TARGET_S}, slo_warn_min_requests=3, heartbeat_every_s=0.3,
        metrics_port=port)
    before = await scrape(port)
    async with tap(service.settings, "#") as hub:
        started = time.time()
        for index in range(REQUESTS):
            exchange = await service.request(
                KIND, {"context": {"place": f"harbour {index}"}, "cache": False})
            assert exchange.final is not None
            assert exchange.final["type"] == catalog.CONTENT_GENERATED
        beat = await beat_with(hub, REQUESTS)
        waited_s = time.time() - started  # every request settled by now
        warnings = hub.of_type(catalog.SLO_WARNING)
    after = await scrape(port)

    text = beat.metrics.slo["text"]
    assert (text.target_s, text.requests, text.within_target, text.share) == (
        TARGET_S, REQUESTS, 0, 0.0)
    assert beat.metrics.slo["image"].target_s == 30 and beat.metrics.slo["image"].share is None
    assert beat.metrics.slo["queue"].requests == REQUESTS
    assert beat.metrics.request_rate > 0

    assert len(warnings) == 1, warnings  # under the level from the 3rd request; once a window
    warning = SloWarning.model_validate(warnings[0]["data"])
    assert (warning.target, warning.requests, warning.within_target, warning.share) == (
        "text", 3, 0, 0.0)
    assert warning.instance == service.settings.instance_id and warning.level == 0.9

    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    assert all(delta[(part, "count")] == REQUESTS for part in PARTS), delta
    assert delta[("llm_provider_seconds", "sum")] >= REQUESTS * DELAY_S
    parts_s = sum(delta[(part, "sum")] for part in PARTS)
    # The three parts of each request add up to its publish-to-settle time: together no more
    # than the test's own wall time for the five requests one after another.
    assert delta[("llm_provider_seconds", "sum")] < parts_s <= waited_s

    env = cli_env(service.settings) | {"REDIS_URL": service.settings.redis_url}
    code, stdout, stderr = await run_cli(env, "health", "--wait", "1.5", "--json")
    assert code == 0, stdout + stderr
    lines = [orjson.loads(line) for line in stdout.splitlines()]
    [mine] = [line for line in lines if line.get("instance") == service.settings.instance_id]
    assert mine["metrics"]["slo"]["text"]["share"] == 0.0
    assert mine["metrics"]["request_rate"] > 0
    code, stdout, stderr = await run_cli(env, "health", "--wait", "1.5")
    assert code == 0, stdout + stderr
    assert "req/s" in stdout and "latency targets" in stdout
    [row] = [line for line in stdout.splitlines() if " text " in line]
    assert "0.2" in row and "0.0%" in row


def deltas(before: dict[tuple[str, str], float],
           after: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}


async def test_a_retried_request_counts_once_with_its_first_attempt_in_the_queue_wait(
        openai_service: Any, fake_openai: Any) -> None:
    fake_openai.script(server_error(503))  # the first attempt fails; the retry is answered
    port = free_port()
    service: Service = await openai_service(heartbeat_every_s=0.3, metrics_port=port)
    before = await scrape(port, "content.validate")
    async with tap(service.settings, catalog.SERVICE_HEARTBEAT) as hub:
        exchange = await service.request(
            "content.validate", {"context": {"content": "A rogue with 30 strength."},
                                 "cache": False})
        assert exchange.final is not None
        assert exchange.final["type"] == catalog.VALIDATION_COMPLETED
        beat = await beat_with(hub, 1, "validation")
    delta = deltas(before, await scrape(port, "content.validate"))
    assert len(fake_openai.chat_requests) == 2  # two attempts, two provider calls

    assert all(delta[(part, "count")] == 1 for part in PARTS), delta  # one request, once
    # The retry copy waited in the 1 s delay queue: the answering delivery's queue wait holds
    # that and the first attempt.
    assert delta[("llm_queue_wait_seconds", "sum")] >= 1.0
    validation = beat.metrics.slo["validation"]
    assert (validation.target_s, validation.requests) == (2.0, 1)
    assert beat.metrics.slo["text"].requests == 0 and beat.metrics.slo["queue"].requests == 1


async def test_an_image_request_counts_in_the_image_class_with_its_provider_time(
        image_service: Any) -> None:  # noqa: F811 (the fixture imported above)
    port = free_port()
    service: Service = await image_service(heartbeat_every_s=0.3, metrics_port=port)
    before = await scrape(port, "item")
    async with tap(service.settings, catalog.SERVICE_HEARTBEAT) as hub:
        exchange = await service.request("item", {
            "context": {"name": "Ember Fang", "type": "dagger"},
            "options": {"provider": "getimg", "count": 2}, "cache": False})
        assert exchange.final is not None
        assert exchange.final["type"] == catalog.IMAGE_GENERATED, exchange.final
        beat = await beat_with(hub, 1, "image")
    delta = deltas(before, await scrape(port, "item"))

    assert all(delta[(part, "count")] == 1 for part in PARTS), delta
    provider_s = delta[("llm_provider_seconds", "sum")]
    # two GetImg calls over HTTP; checking and storing the images is the service's own time
    assert provider_s > 0 and delta[("llm_service_overhead_seconds", "sum")] > 0
    image = beat.metrics.slo["image"]
    assert (image.target_s, image.requests, image.within_target, image.share) == (
        30.0, 1, 1, 1.0)
