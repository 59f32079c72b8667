"""Image edits as the image seed does them: several sources in one edit (OpenAI's repeated
`image[]` field, GetImg v2's `images`), and eight variations as two grid generations.

Through the real broker and Redis, with the fake image APIs recording what they receive.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from tests.conftest import Service, token
from tests.fakes.images_server import FakeImages
from tests.fakes.pictures import png
from tests.images.test_image_round_trip import (
    assert_matches,
    failure,
    generated,
    read_stored,
    source_data,
)


def sizes_of(parts: list[bytes]) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(part)).size for part in parts]


async def test_two_sources_reach_openai_edits_as_two_image_parts(
        image_service: Any, fake_images: FakeImages) -> None:
    """One source is the caller's own stored image (a ref), the other inline data."""
    service: Service = await image_service()
    portrait = await generated(service, "portrait", {
        "prompt": "a halfling bard", "options": {"provider": "openai", "width": 1024,
                                                 "height": 1024}})
    [own] = portrait["images"]
    data = await generated(service, "transform", {
        "prompt": "the bard standing in this tavern", "theme": {"preset": "fairy-tale"},
        "source_image": [{"ref": own["key"]}, {"data": source_data(320, 240)}],
        "options": {"provider": "openai"}})
    [image] = data["images"]
    assert_matches(image, read_stored(image))
    [edit] = fake_images.of("openai", "/edits")
    assert [name for name, _, _ in edit.files] == ["image[]", "image[]"]
    assert [kind for _, kind, _ in edit.files] == ["image/png", "image/png"]
    assert sizes_of([part for _, _, part in edit.files]) == [(1024, 1024), (320, 240)], (
        "both sources, in the order given")
    assert (image["width"], image["height"]) == (1024, 1024), "the first source sets the size"


async def test_getimg_v2_gets_every_source_as_a_data_url(image_service: Any,
                                                          fake_images: FakeImages) -> None:
    service: Service = await image_service(allowed_models="seedream-4-5")
    await generated(service, "transform", {
        "prompt": "a knight in this armour", "theme": {"preset": "dark-fantasy"},
        "source_image": [{"data": source_data(320, 240)}, {"data": source_data(200, 300)}],
        "options": {"model": "seedream-4-5"}})
    [call] = fake_images.of("getimg")
    assert call.path == "/v2/images/generations"
    sent = call.body["images"]
    assert [url.split(",", 1)[0] for url in sent] == ["data:image/png;base64"] * 2
    assert sizes_of([base64.b64decode(url.split(",", 1)[1]) for url in sent]) == [
        (320, 240), (200, 300)]


async def test_getimg_v1_with_two_sources_is_refused_before_any_call(
        image_service: Any, fake_images: FakeImages) -> None:
    service: Service = await image_service()
    error = await failure(service, "transform", {
        "prompt": "restyle", "source_image": [{"data": source_data()}, {"data": source_data()}],
        "options": {"provider": "getimg"}})
    assert error["code"] == "invalid_request" and error["retryable"] is False
    assert error["message"] == (
        "getimg model stable-diffusion-xl-v1-0 (v1 image-to-image) takes one source image, "
        "got 2; use a v2 model or provider openai for several")
    assert fake_images.requests == []


async def test_every_ref_among_several_sources_is_owner_checked(
        image_service: Any, fake_images: FakeImages) -> None:
    service: Service = await image_service()
    mine = await service.request("portrait", {"prompt": "a spy"},
                                 auth=token("llm:image", subject="alice"))
    theirs = await service.request("portrait", {"prompt": "a spy"},
                                   auth=token("llm:image", subject="mallory"))
    assert mine.final is not None and theirs.final is not None
    own, foreign = (r.final["data"]["images"][0]["key"] for r in (mine, theirs))
    before = len(fake_images.requests)
    result = await service.request("transform", {
        "prompt": "combine", "source_image": [{"ref": own}, {"ref": foreign}],
        "options": {"provider": "openai"}}, auth=token("llm:image", subject="alice"))
    assert result.final is not None
    error = result.final["data"]["error"]
    assert error["code"] == "invalid_request"
    assert error["message"] == f"source_image[1]: no stored image of yours under {foreign}", (
        "the same words as a key that holds nothing")
    assert len(fake_images.requests) == before, "no provider call"


@pytest.mark.parametrize(("data", "fragment"), [
    ({"kind": "transform", "source_image": [{"data": "x"}] * 5}, "at most 4 items"),
    ({"kind": "transform", "source_image": []}, "at least 1 item"),
    ({"kind": "variations", "source_image": [{"data": "x"}] * 2},
     "kind variations takes one source_image, got 2"),
    ({"kind": "portrait", "prompt": "a knight", "options": {"count": 5}},
     "options.count 5 is over 4 for kind portrait"),
    ({"kind": "variations", "source_image": {"data": "x"}, "options": {"count": 9}},
     "less than or equal to 8"),
], ids=["five-sources", "no-source", "variations-two", "portrait-five", "variations-nine"])
async def test_source_and_count_bounds_are_one_clear_line(
        image_service: Any, fake_images: FakeImages, data: dict[str, Any],
        fragment: str) -> None:
    service: Service = await image_service()
    kind = data.pop("kind")
    error = await failure(service, kind, data)
    assert error["code"] == "invalid_request" and fragment in error["message"], error
    assert "\n" not in error["message"]
    assert fake_images.requests == []


@pytest.mark.parametrize("provider", ["openai", "getimg"])
async def test_eight_variations_are_two_grids(image_service: Any, fake_images: FakeImages,
                                              provider: str) -> None:
    service: Service = await image_service()
    data = await generated(service, "variations", {
        "source_image": {"data": base64.b64encode(png(400, 400)).decode()},
        "theme": {"preset": "steampunk"}, "options": {"provider": provider, "count": 8}})
    images = data["images"]
    assert len(images) == 8
    assert [i["key"].rsplit("/", 1)[1] for i in images] == [f"{n}.png" for n in range(8)]
    for image in images:
        assert_matches(image, read_stored(image))
        assert image["width"] < 512 and image["height"] < 512, "panels cut from a grid"
    assert len(fake_images.of(provider)) == 2, "two grid generations, one call each"


async def test_six_variations_need_two_grids_and_fit_the_cap(
        image_service: Any, fake_images: FakeImages) -> None:
    """2 grids + 6 x 1 face fix = 8 calls: over a cap of 7, refused before the first."""
    service: Service = await image_service(max_provider_calls_per_request=7)
    error = await failure(service, "variations", {
        "source_image": {"data": source_data(400, 400)},
        "options": {"provider": "openai", "count": 6, "enhance": ["face_fix"]}})
    assert error["code"] == "quota_exhausted"
    assert error["message"].startswith("request needs 8 provider calls, 7 left")
    assert fake_images.requests == []
