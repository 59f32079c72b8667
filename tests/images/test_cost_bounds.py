"""What one image message can cost: unique enhance steps, and provider calls counted against
MAX_PROVIDER_CALLS_PER_REQUEST across all of the message's attempts.

The fake image server records every request it receives: those are the calls counted here.
"""

from __future__ import annotations

from typing import Any

import pytest

from llm_consumer.events import catalog
from tests.conftest import Service
from tests.fakes.images_server import Api, FakeImages, after, fail
from tests.images.test_image_round_trip import failure, generated


def worst(provider: Api = "getimg") -> dict[str, Any]:
    """The largest image request: four images, each through both enhance steps."""
    return {"prompt": "a gnome artificer", "options": {
        "provider": provider, "count": 4, "width": 256, "height": 256,
        "enhance": ["upscale", "face_fix"]}}


@pytest.mark.parametrize(("steps", "reason"), [
    (["face_fix", "face_fix"], "may appear once"),
    (["upscale", "face_fix", "upscale"], "at most 2 items"),
    (["face_fix"] * 10, "at most 2 items"),
], ids=["twice", "three", "ten"])
async def test_repeated_enhance_steps_are_refused_before_any_call(
        image_service: Any, fake_images: FakeImages, steps: list[str], reason: str) -> None:
    service: Service = await image_service()
    error = await failure(service, "portrait", {"prompt": "a knight", "options": {
        "count": 2, "enhance": steps}})
    assert error["code"] == "invalid_request" and "options.enhance" in error["message"]
    assert reason in error["message"], error["message"]
    assert "\n" not in error["message"]
    assert fake_images.requests == []


@pytest.mark.parametrize(("provider", "calls"), [("getimg", 4 + 4 * 2), ("openai", 1 + 4 * 2)])
async def test_the_largest_request_makes_a_counted_number_of_calls(
        image_service: Any, fake_images: FakeImages, provider: Api, calls: int) -> None:
    """count 4 with both enhance steps: GetImg makes one call per image, OpenAI one for all."""
    service: Service = await image_service()
    data = await generated(service, "portrait", worst(provider))
    assert len(data["images"]) == 4
    side = 512 if provider == "getimg" else 2048  # OpenAI answers at 1024 a side
    assert all((i["width"], i["height"]) == (side, side) for i in data["images"]), "upscaled"
    assert len(fake_images.of(provider)) == calls
    assert calls <= 16, "one attempt fits the default cap"


async def test_a_plan_over_the_cap_is_refused_before_paying(image_service: Any,
                                                             fake_images: FakeImages) -> None:
    service: Service = await image_service(max_provider_calls_per_request=8)
    result = await service.request("portrait", worst())
    assert result.final is not None and result.final["type"] == catalog.GENERATION_FAILED
    error = result.final["data"]["error"]
    assert error["code"] == "quota_exhausted" and error["retryable"] is False
    assert error["message"] == ("request needs 12 provider calls, 8 left of its cap of 8 across "
                                "its attempts (MAX_PROVIDER_CALLS_PER_REQUEST)")
    assert fake_images.requests == []


async def test_retries_stop_at_the_cap(image_service: Any, fake_images: FakeImages) -> None:
    """The 5th call of 9 fails (transient): the retry would need 9 more, 7 are left of 12, so
    the message ends as quota_exhausted after 5 calls in all, not 14."""
    service: Service = await image_service(max_provider_calls_per_request=12)
    fake_images.script("openai", *after(4, fail(503, "overloaded", "server_error")))
    result = await service.request("portrait", worst("openai"))
    assert result.final is not None and result.final["type"] == catalog.GENERATION_FAILED
    error = result.final["data"]["error"]
    assert error["code"] == "quota_exhausted", error
    assert "needs 9 provider calls, 7 left of its cap of 12" in error["message"]
    assert len(fake_images.requests) == 5
    states = [e["data"]["state"] for e in result.events if e["type"] == catalog.JOB_STATUS]
    assert states == ["running", "deferred", "running", "failed"]


async def test_a_retry_within_the_cap_runs_again(image_service: Any,
                                                 fake_images: FakeImages) -> None:
    service: Service = await image_service()
    fake_images.script("openai", *after(2, fail(503, "overloaded", "server_error")))
    data = await generated(service, "portrait", worst("openai"))
    assert len(data["images"]) == 4
    assert len(fake_images.requests) == 3 + 9, "3 calls, then the whole attempt again"
