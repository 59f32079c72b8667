"""The OpenAI images provider (the real SDK) against the fake server over real HTTP."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from llm_consumer.errors import PermanentFailure, ServiceError, TransientFailure
from llm_consumer.providers.images_base import ImageJob
from llm_consumer.providers.openai_images import OpenAIImageProvider, openai_size
from tests.fakes.images_server import OPENAI_KEY, FakeImages, fail, moderation_blocked
from tests.fakes.pictures import png


@pytest.fixture
async def fake() -> AsyncIterator[FakeImages]:
    async with FakeImages() as server:
        yield server


@pytest.fixture
async def openai_images(fake: FakeImages) -> AsyncIterator[OpenAIImageProvider]:
    provider = OpenAIImageProvider(OPENAI_KEY, base_url=fake.openai_base_url,
                                   model="gpt-image-1.5", timeout_s=10)
    yield provider
    await provider.aclose()


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


@pytest.mark.parametrize(("width", "height", "size"), [
    (None, None, "auto"), (1024, 1024, "1024x1024"), (1100, 1000, "1024x1024"),
    (1600, 900, "1536x1024"), (768, 1024, "1024x1536"),
])
def test_size_keeps_the_orientation(width: int | None, height: int | None, size: str) -> None:
    assert openai_size(width, height) == size


async def test_generation(openai_images: OpenAIImageProvider, fake: FakeImages) -> None:
    result = await openai_images.run(ImageJob("generate", prompt="a castle",
                                              negative_prompt="text", width=768, height=1024,
                                              count=3, output_format="webp"))
    [call] = fake.of("openai")
    assert call.path == "/v1/images/generations"
    assert call.body["model"] == "gpt-image-1.5" and call.body["n"] == 3
    assert call.body["size"] == "1024x1536" and call.body["output_format"] == "webp"
    assert call.body["prompt"] == "a castle Avoid: text."
    assert len(result.images) == 3 and size_of(result.images[0]) == (1024, 1536)
    assert Image.open(io.BytesIO(result.images[0])).format == "WEBP"


async def test_edit_sends_every_source_as_image_array(openai_images: OpenAIImageProvider,
                                                      fake: FakeImages) -> None:
    sources = (png(300, 200), png(200, 300, "another"))
    await openai_images.run(ImageJob("edit", prompt="restyle", sources=sources,
                                     width=300, height=200))
    [call] = fake.of("openai")
    assert call.path == "/v1/images/edits"
    assert [name for name, _, _ in call.files] == ["image[]", "image[]"]
    assert [data for _, _, data in call.files] == list(sources)
    assert [kind for _, kind, _ in call.files] == ["image/png", "image/png"]
    assert call.body["prompt"] == "restyle" and call.body["size"] == "1536x1024"


@pytest.mark.parametrize(("step", "size"), [("upscale", (600, 400)), ("face_fix", (300, 200))])
async def test_enhancement_steps_keep_their_promised_size(
        openai_images: OpenAIImageProvider, fake: FakeImages, step: str,
        size: tuple[int, int]) -> None:
    result = await openai_images.run(ImageJob(step, sources=(png(300, 200),),  # type: ignore[arg-type]
                                              width=300, height=200))
    assert size_of(result.images[0]) == size
    [call] = fake.of("openai")
    assert "Reproduce this exact image" in call.body["prompt"] or "faces" in call.body["prompt"]


@pytest.mark.parametrize(("scripted", "code", "cls"), [
    (moderation_blocked(), "content_policy", PermanentFailure),
    (fail(429, "You exceeded your current quota", "insufficient_quota"), "quota_exhausted",
     PermanentFailure),
    (fail(400, "Billing hard limit has been reached", "billing_hard_limit_reached"),
     "quota_exhausted", PermanentFailure),
    (fail(400, "Invalid size", "invalid_value"), "invalid_request", PermanentFailure),
    (fail(401, "Incorrect API key", "invalid_api_key"), "no_provider", PermanentFailure),
    (fail(429, "Rate limit", "rate_limit_exceeded", retry_after="2"), "rate_limited",
     TransientFailure),
    (fail(500, "The server had an error", "server_error"), "provider_unavailable",
     TransientFailure),
])
async def test_errors_are_translated(openai_images: OpenAIImageProvider, fake: FakeImages,
                                     scripted: object, code: str,
                                     cls: type[ServiceError]) -> None:
    fake.script("openai", scripted)  # type: ignore[arg-type]
    with pytest.raises(cls) as caught:
        await openai_images.run(ImageJob("generate", prompt="a castle"))
    assert caught.value.code == code
    if code == "rate_limited":
        assert isinstance(caught.value, TransientFailure) and caught.value.retry_after_s == 2.0
    if code == "no_provider":
        assert "OPENAI_API_KEY" in caught.value.message
    assert len(fake.of("openai")) == 1, "the SDK does not retry on its own"

