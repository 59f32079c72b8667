"""Image requests through the real broker, Redis and HTTP providers (the fake image server).

Each test checks what a peer would: the event validates, and every stored file exists, decodes,
and has the size, dimensions and sha256 the event announces.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from PIL import Image

from llm_consumer.events import catalog
from llm_consumer.events.requests import ImageKind
from llm_consumer.events.results import ImageGenerated
from tests.conftest import Service
from tests.fakes.images_server import Api, FakeImages, Odd, fail, moderation_blocked
from tests.fakes.pictures import png
from tests.hub import dead_letters
from tests.images.conftest import owner_folder

PROVIDERS = ("getimg", "openai")
LOOPBACK = "127.0.0.1/32"
PORTRAIT = {"name": "Mira Thornvale", "race": "Half-Elf", "class": "Rogue", "level": 3,
            "appearance": "scar across the left brow, hooded leather armour"}
CONTEXTS: dict[ImageKind, dict[str, Any]] = {
    ImageKind.PORTRAIT: PORTRAIT,
    ImageKind.LOCATION: {"name": "Greyhollow Keep", "terrain": "marsh",
                         "description": "a ruined keep above a drowned village"},
    ImageKind.ITEM: {"name": "Ember Fang", "rarity": "rare", "type": "dagger",
                     "description": "a blade that glows like coals"},
}


def read_stored(image: dict[str, Any], s3: Any = None, bucket: str = "",
                prefix: str = "") -> bytes:
    """The bytes of a stored image, fetched the way a peer would from its URL."""
    if image["url"].startswith("file://"):
        return Path(urlparse(image["url"]).path).read_bytes()
    answer = s3.get_object(Bucket=bucket, Key=prefix + image["key"])
    return bytes(answer["Body"].read())


def assert_matches(image: dict[str, Any], data: bytes, fmt: str = "png") -> Image.Image:
    """The stored bytes are what the event says they are."""
    assert len(data) == image["bytes"]
    assert hashlib.sha256(data).hexdigest() == image["sha256"]
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    assert decoded.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    assert image["content_type"] == f"image/{fmt}"
    assert decoded.size == (image["width"], image["height"])
    assert image["quality"]["format"] == fmt and image["quality"]["contrast"] > 2
    return decoded


async def generated(service: Service, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    result = await service.request(kind, data)
    assert result.final is not None, "no result"
    assert result.final["type"] == catalog.IMAGE_GENERATED, result.final["data"]
    ImageGenerated.model_validate(result.final["data"])
    assert result.final["data"]["request_id"] == result.request["id"]
    return dict(result.final["data"])


async def failure(service: Service, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    result = await service.request(kind, data)
    assert result.final is not None and result.final["type"] == catalog.GENERATION_FAILED, (
        result.final)
    return dict(result.final["data"]["error"])


def source_data(width: int = 320, height: int = 240) -> str:
    return base64.b64encode(png(width, height)).decode()


# --------------------------------------------------------------------------- every kind


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("kind", [ImageKind.PORTRAIT, ImageKind.LOCATION, ImageKind.ITEM],
                         ids=lambda k: k.value)
async def test_text_to_image_kinds(image_service: Any, fake_images: FakeImages,
                                   provider: Api, kind: ImageKind) -> None:
    service: Service = await image_service()
    data = await generated(service, kind.value, {
        "context": CONTEXTS[kind], "theme": {"preset": "dark-fantasy"},
        "options": {"provider": provider}})
    [image] = data["images"]
    assert_matches(image, read_stored(image))
    assert data["provider"] == provider and data["kind"] == kind.value
    assert data["palette"][0] == "#1b1b1f"
    assert image["quality"]["palette_distance"] < 15, "the themed picture uses the palette"
    assert image["key"].startswith(owner_folder()) and image["key"].endswith("/0.png")
    assert data["request_id"] not in image["key"], "keys are the service's, not the caller's"
    [call] = fake_images.of(provider)
    sent = call.body["prompt"]
    assert CONTEXTS[kind]["name"] in sent and "#6b2d2d" in sent, "context and palette reach it"
    if provider == "getimg":
        assert call.path == "/v1/stable-diffusion-xl/text-to-image"
        assert "cartoon style" in call.body["negative_prompt"], "the theme's negative prompt"
        assert data["model_used"] == "stable-diffusion-xl-v1-0"
    else:
        assert "Avoid:" in sent and data["model_used"] == "gpt-image-1.5"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_transform_restyles_a_source(image_service: Any, fake_images: FakeImages,
                                           provider: Api) -> None:
    service: Service = await image_service()
    data = await generated(service, "transform", {
        "source_image": {"data": source_data()}, "theme": {"preset": "fairy-tale"},
        "options": {"provider": provider, "output_format": "webp"}})
    [image] = data["images"]
    assert_matches(image, read_stored(image), "webp")
    assert image["key"].endswith("/0.webp")
    assert "storybook watercolour" in data["prompt"]
    [call] = fake_images.of(provider)
    if provider == "getimg":
        assert call.path == "/v1/stable-diffusion-xl/image-to-image"
        assert Image.open(io.BytesIO(base64.b64decode(call.body["image"]))).size == (320, 240)
    else:
        assert call.path == "/v1/images/edits" and [f[0] for f in call.files] == ["image[]"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_enhance_chains_upscale_and_face_fix(image_service: Any, fake_images: FakeImages,
                                                   provider: Api) -> None:
    service: Service = await image_service()
    data = await generated(service, "enhance", {
        "source_image": {"data": source_data(300, 200)},
        "options": {"provider": provider, "enhance": ["upscale", "face_fix"]}})
    [image] = data["images"]
    decoded = assert_matches(image, read_stored(image))
    assert decoded.size == (600, 400), "upscaled 2x, then face-fixed at the same size"
    assert data.get("prompt") is None
    calls = fake_images.of(provider)
    assert len(calls) == 2, "one call per step, in order"
    if provider == "getimg":
        assert [c.path for c in calls] == ["/v1/enhancements/upscale",
                                           "/v1/enhancements/face-fix"]
        assert data["model_used"] == "real-esrgan-4x+gfpgan-v1-3"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_variations_split_one_grid_into_trimmed_images(
        image_service: Any, fake_images: FakeImages, provider: Api) -> None:
    service: Service = await image_service()
    data = await generated(service, "variations", {
        "source_image": {"data": source_data(400, 400)}, "theme": {"preset": "steampunk"},
        "options": {"provider": provider}})
    assert len(data["images"]) == 4 and len(fake_images.of(provider)) == 1, "one grid, 4 images"
    keys = [image["key"] for image in data["images"]]
    folder = keys[0].rsplit("/", 1)[0]
    assert folder.startswith(owner_folder()) and len(folder) == len(owner_folder()) + 32
    assert keys == [f"{folder}/{i}.png" for i in range(4)], "one new folder per request"
    for image in data["images"]:
        decoded = assert_matches(image, read_stored(image)).convert("RGB")
        assert image["width"] < 512 and image["height"] < 512, "panels are cut from the grid"
        corners = [decoded.getpixel(xy) for xy in ((0, 0), (decoded.width - 1, 0))]
        assert all(c != (255, 255, 255) for c in corners), "the white gutters were trimmed"
    assert len({image["sha256"] for image in data["images"]}) == 4, "four different variations"


async def test_count_and_post_enhance_on_a_portrait(image_service: Any,
                                                    fake_images: FakeImages) -> None:
    service: Service = await image_service()
    data = await generated(service, "portrait", {
        "prompt": "an old dwarf smith", "options": {
            "count": 2, "seed": 7, "width": 256, "height": 320, "enhance": ["face_fix"]}})
    assert [i["key"].rsplit("/", 1)[1] for i in data["images"]] == ["0.png", "1.png"]
    generations = fake_images.of("getimg", "text-to-image")
    assert sorted(c.body["seed"] for c in generations) == [7, 8]
    assert len(fake_images.of("getimg", "face-fix")) == 2
    for image in data["images"]:
        assert_matches(image, read_stored(image))
        assert (image["width"], image["height"]) == (256, 320)
    assert data["palette"] == [] and data["images"][0]["quality"].get("palette_distance") is None


async def test_getimg_v2_model_downloads_its_temporary_url(image_service: Any,
                                                           fake_images: FakeImages) -> None:
    service: Service = await image_service(allowed_models="seedream-4-5")  # not a v1 model
    data = await generated(service, "location", {
        "prompt": "a harbour at dusk", "theme": {"preset": "nautical"},
        "options": {"model": "seedream-4-5", "width": 1600, "height": 900}})
    [call] = fake_images.of("getimg")
    assert call.path == "/v2/images/generations" and call.body["aspect_ratio"] == "16:9"
    assert fake_images.downloads == 1
    [image] = data["images"]
    assert (image["width"], image["height"]) == (1344, 768)
    assert_matches(image, read_stored(image))
    assert data["model_used"] == "seedream-4-5"


# --------------------------------------------------------------------------- failures


async def test_out_of_credits_is_final_and_not_retried(image_service: Any,
                                                       fake_images: FakeImages) -> None:
    service: Service = await image_service()
    fake_images.script("getimg", fail(402, "Not enough credits", "insufficient_credits"))
    error = await failure(service, "item", {"prompt": "a silver key"})
    assert error["code"] == "quota_exhausted" and error["retryable"] is False
    await asyncio.sleep(1.5)
    assert len(fake_images.of("getimg")) == 1, "402 is never retried"
    assert await dead_letters(service.settings, expect=1, timeout_s=0.5) == []


async def test_rate_limit_waits_and_retries(image_service: Any, fake_images: FakeImages) -> None:
    service: Service = await image_service()
    fake_images.script("getimg", fail(429, "Too many requests", "rate_limit_exceeded",
                                      retry_after="1"))
    result = await service.request("item", {"prompt": "a silver key"})
    assert result.final is not None and result.final["type"] == catalog.IMAGE_GENERATED
    assert len(fake_images.of("getimg")) == 2
    states = [e["data"]["state"] for e in result.events if e["type"] == catalog.JOB_STATUS]
    assert states == ["running", "deferred", "running", "completed"]


async def test_server_error_is_retried(image_service: Any, fake_images: FakeImages) -> None:
    service: Service = await image_service()
    fake_images.script("openai", fail(503, "overloaded", "server_error"))
    data = await generated(service, "portrait", {"prompt": "a elf bard",
                                                 "options": {"provider": "openai"}})
    assert len(fake_images.of("openai")) == 2 and len(data["images"]) == 1


async def test_moderation_block_is_final(image_service: Any, fake_images: FakeImages) -> None:
    service: Service = await image_service()
    fake_images.script("openai", moderation_blocked())
    error = await failure(service, "portrait", {"prompt": "something forbidden",
                                                "options": {"provider": "openai"}})
    assert error["code"] == "content_policy" and error["retryable"] is False
    assert "safety system" in error["message"]
    await asyncio.sleep(1.5)
    assert len(fake_images.of("openai")) == 1


async def test_unreadable_answer_is_retried_and_not_stored(image_service: Any,
                                                           fake_images: FakeImages,
                                                           tmp_path: Path) -> None:
    service: Service = await image_service(max_attempts=1)
    fake_images.script("openai", Odd("garbage"))
    error = await failure(service, "item", {"prompt": "a key",
                                            "options": {"provider": "openai", "count": 2}})
    assert error["code"] == "provider_unavailable" and "not a readable image" in error["message"]
    assert error["retryable"] is True, "another attempt may do better (here: attempts used up)"
    assert not list((tmp_path / "images").rglob("*.*")), "nothing, not even the good one"


async def test_blank_answer_is_final_and_nothing_more_is_paid_for_it(
        image_service: Any, fake_images: FakeImages, tmp_path: Path) -> None:
    """A black picture is what a safety filter answers: asking again, or enhancing it, would
    pay for the same refusal (this once made 111 calls for one message)."""
    service: Service = await image_service()
    fake_images.script("getimg", Odd("blank"))
    result = await service.request("item", {"prompt": "a key", "options": {
        "count": 2, "enhance": ["upscale", "face_fix"]}})
    assert result.final is not None and result.final["type"] == catalog.GENERATION_FAILED
    error = result.final["data"]["error"]
    assert error["code"] == "content_policy" and error["retryable"] is False
    assert "blank image" in error["message"] and "uniform" in error["message"]
    assert len(fake_images.requests) == 2, "the two generations; no enhance step, no retry"
    states = [e["data"]["state"] for e in result.events if e["type"] == catalog.JOB_STATUS]
    assert states == ["running", "failed"]
    assert not list((tmp_path / "images").rglob("*.*")), "nothing stored"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_provider_without_a_key_is_named(image_service: Any, provider: str) -> None:
    missing = {"getimg": {"getimg_api_key": None}, "openai": {"openai_api_key": None}}
    service: Service = await image_service(**missing[provider])
    error = await failure(service, "item", {"prompt": "a key", "options": {"provider": provider}})
    assert error["code"] == "no_provider"
    assert {"getimg": "GETIMG_API_KEY", "openai": "OPENAI_API_KEY"}[provider] in error["message"]


async def test_default_provider_is_configurable(image_service: Any,
                                                fake_images: FakeImages) -> None:
    service: Service = await image_service(image_provider="openai")
    data = await generated(service, "item", {"prompt": "a brass compass"})
    assert data["provider"] == "openai" and len(fake_images.of("openai")) == 1


async def test_upscale_past_the_size_limit_is_refused_before_paying(
        image_service: Any, fake_images: FakeImages) -> None:
    service: Service = await image_service()
    error = await failure(service, "enhance", {"source_image": {"data": source_data(4096, 2100)}})
    assert error["code"] == "invalid_request" and "cannot upscale a 4096x2100" in error["message"]
    assert fake_images.requests == []
