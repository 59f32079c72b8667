"""Image requests on the real Redis Cluster: generated, stored, answered from the cache for the
same caller only, idempotent by event id, and read back by `source_image.ref`."""

from __future__ import annotations

from typing import Any

from llm_consumer.client import build_request
from llm_consumer.events import catalog
from tests.cluster.redis_cluster import RedisCluster
from tests.conftest import Service, token
from tests.fakes.images_server import FakeImages
from tests.images.conftest import fake_images, image_service  # noqa: F401 - fixtures

PORTRAIT = {"context": {"name": "Mira Thornvale", "race": "Half-Elf", "class": "Rogue"},
            "theme": {"preset": "dark-fantasy"}, "options": {"provider": "getimg"}}


def images_of(result: Any) -> list[dict[str, Any]]:
    assert result.final is not None and result.final["type"] == catalog.IMAGE_GENERATED, (
        result.final)
    return list(result.final["data"]["images"])


async def test_image_requests_on_the_cluster(image_service: Any,  # noqa: F811
                                             fake_images: FakeImages,  # noqa: F811
                                             redis_cluster: RedisCluster) -> None:
    service: Service = await image_service(redis_mode="cluster", redis_url=redis_cluster.url)
    alice, bob = token("llm:image", subject="alice"), token("llm:image", subject="bob")

    first = await service.request("portrait", PORTRAIT, auth=alice)
    [stored] = images_of(first)
    again = await service.request("portrait", PORTRAIT, auth=alice)
    assert images_of(again)[0]["key"] == stored["key"] and again.final is not None
    assert again.final["data"]["cached"] is True
    assert len(fake_images.of("getimg")) == 1

    bobs = await service.request("portrait", PORTRAIT, auth=bob)
    assert images_of(bobs)[0]["key"] != stored["key"], "no cache hit on another caller's images"
    assert len(fake_images.of("getimg")) == 2

    envelope = build_request("item", PORTRAIT)
    once = await service.send(envelope, auth=alice)
    twice = await service.send(envelope, auth=alice)
    assert images_of(once) == images_of(twice), "the same event id: its stored answer"
    assert len(fake_images.of("getimg")) == 3

    enhanced = await service.request("enhance", {
        "source_image": {"ref": stored["key"]}, "options": {"provider": "getimg",
                                                            "enhance": ["upscale"]}}, auth=alice)
    [bigger] = images_of(enhanced)
    assert bigger["width"] == 2 * stored["width"]
    refused = await service.request("enhance", {
        "source_image": {"ref": stored["key"]}, "options": {"provider": "getimg"}}, auth=bob)
    assert refused.final is not None
    assert refused.final["data"]["error"]["code"] == "invalid_request"
