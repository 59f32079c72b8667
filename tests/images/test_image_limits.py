"""The documents' image limits, end to end: GetImg's per-model quota keyed by the model the
request really uses (the default one by its name), and "image generation 50/min" as one budget
over both image operations (text-to-image and image-to-image)."""

from __future__ import annotations

import asyncio
from typing import Any

from llm_consumer.client import build_request
from llm_consumer.events import catalog
from tests.bus.test_limits_e2e import waiting
from tests.conftest import Service, token
from tests.fakes.images_server import FakeImages
from tests.hub import tap
from tests.images.test_image_round_trip import generated, source_data

STRICT = {"rate_limit_inline_wait_s": 0, "rate_limit_user_share": 1}


async def test_the_default_getimg_model_is_limited_by_its_name(image_service: Any,
                                                               fake_images: FakeImages) -> None:
    service: Service = await image_service(
        rate_limit_models={"stable-diffusion-xl-v1-0": "1/60s"}, **STRICT)
    first = await generated(service, "portrait", {"prompt": "a dwarf cleric",
                                                  "options": {"provider": "getimg"}})
    assert first["model_used"] == "stable-diffusion-xl-v1-0"
    exceeded, deferred = await waiting(service, "item", {
        "prompt": "a silver holy symbol", "options": {"provider": "getimg"}})
    assert (exceeded["scope"], exceeded["key"]) == ("model", "stable-diffusion-xl-v1-0")
    assert exceeded["limit"] == 1 and exceeded["remaining"] == 0
    assert deferred["state"] == "deferred"
    assert len(fake_images.of("getimg")) == 1, "the second request made no call"


async def test_another_model_is_not_charged_to_the_default_one(
        image_service: Any, fake_images: FakeImages) -> None:
    service: Service = await image_service(
        rate_limit_models={"stable-diffusion-xl-v1-0": "1/60s"}, **STRICT)
    await generated(service, "portrait", {"prompt": "a dwarf cleric"})
    other = await generated(service, "portrait", {
        "prompt": "an elf ranger", "options": {"model": "juggernaut-xl-v10"}})
    assert other["model_used"] == "juggernaut-xl-v10"
    assert len(fake_images.of("getimg")) == 2


async def test_the_image_budget_holds_across_both_image_operations(
        image_service: Any, fake_images: FakeImages) -> None:
    service: Service = await image_service(rate_limit_image="2/60s", **STRICT)
    await generated(service, "portrait", {"prompt": "a tiefling warlock"})
    await generated(service, "transform", {"prompt": "as a woodcut",
                                           "source_image": {"data": source_data()}})
    exceeded, deferred = await waiting(service, "variations", {
        "source_image": {"data": source_data()}})
    assert (exceeded["scope"], exceeded["key"]) == ("operation", "image")
    assert exceeded["limit"] == 2 and deferred["state"] == "deferred"
    # A text-to-image request waits on the same budget. (Its own rate_limit.exceeded notice
    # may be folded into the one above: one notice per scope and key a second.)
    request = build_request("location", {"prompt": "a salt marsh"})
    async with tap(service.settings) as hub:
        sending = asyncio.create_task(service.send(request, auth=token(), timeout_s=60))
        statuses = await hub.wait_for(catalog.JOB_STATUS, request["id"], count=2)
        sending.cancel()
    assert statuses[1]["data"]["state"] == "deferred"
    assert len(fake_images.requests) == 2
