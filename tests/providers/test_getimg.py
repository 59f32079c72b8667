"""The GetImg.AI provider against the fake server over real HTTP: bodies sent, errors mapped."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from llm_consumer.errors import PermanentFailure, ServiceError, TransientFailure
from llm_consumer.providers.getimg import GetImgProvider
from llm_consumer.providers.images_base import ImageJob
from tests.fakes.images_server import GETIMG_KEY, FakeImages, fail
from tests.fakes.pictures import png


@pytest.fixture
async def fake() -> AsyncIterator[FakeImages]:
    async with FakeImages() as server:
        yield server


@pytest.fixture
async def getimg(fake: FakeImages) -> AsyncIterator[GetImgProvider]:
    provider = GetImgProvider(GETIMG_KEY, base_url=fake.base_url + "/",
                              model="stable-diffusion-xl-v1-0", timeout_s=10)
    yield provider
    await provider.aclose()


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


async def test_v1_text_to_image_body(getimg: GetImgProvider, fake: FakeImages) -> None:
    result = await getimg.run(ImageJob("generate", prompt="a castle", negative_prompt="text",
                                       width=700, height=1000, count=2, seed=5))
    assert len(result.images) == 2 and result.model_used == "stable-diffusion-xl-v1-0"
    calls = fake.of("getimg")
    assert {c.path for c in calls} == {"/v1/stable-diffusion-xl/text-to-image"}
    body = calls[0].body
    assert body["model"] == "stable-diffusion-xl-v1-0" and body["negative_prompt"] == "text"
    assert (body["width"], body["height"]) == (704, 1024), "multiples of 64"
    assert body["response_format"] == "b64" and body["output_format"] == "png"
    assert sorted(c.body["seed"] for c in calls) == [5, 6], "one call per image, distinct seeds"
    assert calls[0].headers["authorization"] == f"Bearer {GETIMG_KEY}"
    assert size_of(result.images[0]) == (704, 1024)


async def test_family_without_negative_prompt_gets_it_in_words(getimg: GetImgProvider,
                                                               fake: FakeImages) -> None:
    await getimg.run(ImageJob("generate", prompt="a castle", negative_prompt="text",
                              model="flux-schnell"))
    [call] = fake.of("getimg")
    assert call.path == "/v1/flux-schnell/text-to-image"
    assert "model" not in call.body and "negative_prompt" not in call.body
    assert call.body["prompt"] == "a castle Avoid: text."


async def test_image_to_image_and_enhancements(getimg: GetImgProvider, fake: FakeImages) -> None:
    source = png(256, 192)
    edited = await getimg.run(ImageJob("edit", prompt="gothic", sources=(source,),
                                       strength=0.5))
    upscaled = await getimg.run(ImageJob("upscale", sources=(source,)))
    fixed = await getimg.run(ImageJob("face_fix", sources=(source,), output_format="jpeg"))
    paths = [c.path for c in fake.of("getimg")]
    assert paths == ["/v1/stable-diffusion-xl/image-to-image", "/v1/enhancements/upscale",
                     "/v1/enhancements/face-fix"]
    i2i, up, face = (c.body for c in fake.of("getimg"))
    assert base64.b64decode(i2i["image"]) == source and i2i["strength"] == 0.5
    assert up["model"] == "real-esrgan-4x" and up["scale"] == 2
    assert face["model"] == "gfpgan-v1-3" and face["output_format"] == "jpeg"
    assert size_of(edited.images[0]) == (256, 192)
    assert size_of(upscaled.images[0]) == (512, 384)
    assert Image.open(io.BytesIO(fixed.images[0])).format == "JPEG"


async def test_model_without_image_to_image_is_refused(getimg: GetImgProvider,
                                                       fake: FakeImages) -> None:
    with pytest.raises(PermanentFailure) as caught:
        await getimg.run(ImageJob("edit", prompt="x", sources=(png(),), model="essential-v2"))
    assert caught.value.code == "invalid_request" and fake.requests == []


async def test_v2_downloads_at_once_without_the_api_key(getimg: GetImgProvider,
                                                        fake: FakeImages) -> None:
    source = png(200, 200)
    result = await getimg.run(ImageJob("edit", prompt="a harbour", sources=(source,),
                                       model="seedream-4-5", width=900, height=1600))
    [call] = fake.of("getimg")
    assert call.path == "/v2/images/generations"
    assert call.body["aspect_ratio"] == "9:16" and call.body["model"] == "seedream-4-5"
    assert call.body["images"][0].startswith("data:image/png;base64,")
    assert fake.downloads == 1, "the fake refuses downloads that carry an Authorization header"
    assert size_of(result.images[0]) == (200, 200)


async def test_v2_download_glitch_is_retried_quickly(getimg: GetImgProvider,
                                                     fake: FakeImages) -> None:
    fake.script("download", fail(503, "try again"))
    result = await getimg.run(ImageJob("generate", prompt="a harbour", model="seedream-4-5"))
    assert fake.downloads == 2 and size_of(result.images[0]) == (1024, 1024)


async def test_v2_download_that_keeps_failing_is_transient(getimg: GetImgProvider,
                                                           fake: FakeImages) -> None:
    fake.script("download", *[fail(502, "bad gateway")] * 3)
    with pytest.raises(TransientFailure) as caught:
        await getimg.run(ImageJob("generate", prompt="a harbour", model="seedream-4-5"))
    assert fake.downloads == 3 and "download failed" in caught.value.message


@pytest.mark.parametrize(("status", "headers", "code", "cls", "retry_after"), [
    (400, {}, "invalid_request", PermanentFailure, None),
    (401, {}, "no_provider", PermanentFailure, None),
    (402, {}, "quota_exhausted", PermanentFailure, None),
    (404, {}, "invalid_request", PermanentFailure, None),
    (429, {"retry_after": "7"}, "rate_limited", TransientFailure, 7.0),
    (429, {}, "rate_limited", TransientFailure, None),
    (500, {}, "provider_unavailable", TransientFailure, None),
    (503, {"retry_after": "3"}, "provider_unavailable", TransientFailure, 3.0),
])
async def test_errors_are_translated(getimg: GetImgProvider, fake: FakeImages, status: int,
                                     headers: dict[str, str], code: str,
                                     cls: type[ServiceError], retry_after: float | None) -> None:
    fake.script("getimg", fail(status, f"status {status}", "some_code", **headers))
    with pytest.raises(cls) as caught:
        await getimg.run(ImageJob("generate", prompt="a castle"))
    assert caught.value.code == code and f"getimg {status}" in caught.value.message
    if isinstance(caught.value, TransientFailure):
        assert caught.value.retry_after_s == retry_after
    assert len(fake.of("getimg")) == 1, "no retry loop of our own"


async def test_wrong_key_names_the_variable(fake: FakeImages) -> None:
    provider = GetImgProvider("key-wrong", base_url=fake.base_url, model="flux-schnell",
                              timeout_s=5)
    try:
        with pytest.raises(PermanentFailure) as caught:
            await provider.run(ImageJob("generate", prompt="x"))
    finally:
        await provider.aclose()
    assert caught.value.code == "no_provider" and "GETIMG_API_KEY" in caught.value.message


async def test_unreachable_server_is_transient(fake: FakeImages) -> None:
    provider = GetImgProvider(GETIMG_KEY, base_url="http://127.0.0.1:9", model="flux-schnell",
                              timeout_s=5)
    try:
        with pytest.raises(TransientFailure) as caught:
            await provider.run(ImageJob("generate", prompt="x"))
    finally:
        await provider.aclose()
    assert caught.value.code == "provider_unavailable"
