"""GetImg.AI over httpx2: the v1 endpoints of each model family, the v2 generations API, and
the v1 enhancements (upscale, face fix). Vendor errors are translated at this boundary.

A model in V1_FAMILIES is served by `/v1/{family}/text-to-image` (and `image-to-image` when
the family has one); any other model name goes to `POST /v2/images/generations`, whose answer
holds temporary URLs that are downloaded at once. An edit of several sources goes to v2 (its
`images` list, as data URLs); v1's image-to-image takes one image, so a v1 model refuses more
before any call.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from llm_consumer.errors import PermanentFailure, ServiceError, TransientFailure
from llm_consumer.images.processing import CONTENT_TYPES, sniff_format
from llm_consumer.lazy import lazy_module
from llm_consumer.providers.images_base import (
    ImageJob,
    ImageResult,
    gather_or_raise,
    nearest_ratio,
    with_negative,
)
from llm_consumer.providers.openai_errors import retry_after_seconds
from llm_consumer.tracing import outgoing

if TYPE_CHECKING:
    import httpx2
else:  # loaded when a GetImg provider is made (a worker with no GetImg key never loads it)
    httpx2 = lazy_module("httpx2")

V1_FAMILIES: dict[str, str] = {
    "stable-diffusion-v1-5": "stable-diffusion",
    "realistic-vision-v5-1": "stable-diffusion",
    "dream-shaper-v8": "stable-diffusion",
    "absolute-reality-v1-8-1": "stable-diffusion",
    "stable-diffusion-xl-v1-0": "stable-diffusion-xl",
    "juggernaut-xl-v10": "stable-diffusion-xl",
    "realvis-xl-v4": "stable-diffusion-xl",
    "reproduction-v3-31": "stable-diffusion-xl",
    "lcm-dream-shaper-v7": "latent-consistency",
    "lcm-realistic-vision-v5-1": "latent-consistency",
    "flux-schnell": "flux-schnell",
    "essential-v2": "essential-v2",
}
DIFFUSION = frozenset({"stable-diffusion", "stable-diffusion-xl", "latent-consistency"})
SIDES: dict[str, tuple[int, int]] = {"stable-diffusion": (256, 1024)}  # others: (256, 1536)
V2_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3")
UPSCALE_MODEL, UPSCALE_SCALE = "real-esrgan-4x", 2
FACE_FIX_MODEL = "gfpgan-v1-3"
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024


class _DownloadGlitch(Exception):
    """A temporary URL failed in a way a quick second try may fix."""


def translate_status(response: httpx2.Response) -> ServiceError:
    """GetImg's `{"error": {type, code, message}}` answers onto the error tree."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    code = str(error.get("code") or error.get("type") or "")
    detail = f"getimg {status}: {error.get('message') or response.reason_phrase}"
    if status == 402:
        return PermanentFailure(detail + " (out of credits)", code="quota_exhausted")
    if status in (401, 403):
        return PermanentFailure(f"getimg rejected GETIMG_API_KEY: {detail}", code="no_provider")
    if status == 429:
        return TransientFailure(detail, code="rate_limited",
                                retry_after_s=retry_after_seconds(response.headers))
    if status == 408:
        return TransientFailure(detail, code="timeout")
    if status >= 500 or status == 409:
        return TransientFailure(detail, code="provider_unavailable",
                                retry_after_s=retry_after_seconds(response.headers))
    if "nsfw" in code or "content_policy" in code:
        return PermanentFailure(detail, code="content_policy")
    return PermanentFailure(detail, code="invalid_request")


def _side(value: int | None, family: str, default: int) -> int:
    low, high = SIDES.get(family, (256, 1536))
    return max(low, min(high, round((value or default) / 64) * 64))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class GetImgProvider:
    name = "getimg"

    def __init__(self, api_key: str, *, base_url: str, model: str, timeout_s: float) -> None:
        self.model = model
        self._base = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {api_key}"}
        # No default auth header: the same client downloads v2's signed URLs from elsewhere.
        self._client = httpx2.AsyncClient(timeout=timeout_s, trust_env=False,
                                          headers={"Accept": "application/json"})

    async def aclose(self) -> None:
        await self._client.aclose()

    async def run(self, job: ImageJob) -> ImageResult:
        model = job.model or self.model
        if job.operation in ("upscale", "face_fix"):
            return ImageResult((await self._enhance(job),), self._enhancer(job))
        family = V1_FAMILIES.get(model)
        if family is not None and job.operation == "edit" and len(job.sources) > 1:
            raise PermanentFailure(
                f"getimg model {model} (v1 image-to-image) takes one source image, got "
                f"{len(job.sources)}; use a v2 model or provider openai for several",
                code="invalid_request")
        if family is None:
            calls = [self._v2(job, model) for _ in range(job.count)]
        else:
            calls = [self._v1(job, model, family, index) for index in range(job.count)]
        return ImageResult(tuple(await gather_or_raise(calls)), model)

    @staticmethod
    def _enhancer(job: ImageJob) -> str:
        return UPSCALE_MODEL if job.operation == "upscale" else FACE_FIX_MODEL

    async def _enhance(self, job: ImageJob) -> bytes:
        body: dict[str, Any] = {"model": self._enhancer(job), "image": _b64(job.sources[0]),
                                "output_format": job.output_format, "response_format": "b64"}
        if job.operation == "upscale":
            body["scale"] = UPSCALE_SCALE
            return await self._v1_image("/v1/enhancements/upscale", body)
        return await self._v1_image("/v1/enhancements/face-fix", body)

    async def _v1(self, job: ImageJob, model: str, family: str, index: int) -> bytes:
        body: dict[str, Any] = {"prompt": job.prompt, "output_format": job.output_format,
                                "response_format": "b64"}
        if job.seed is not None:
            body["seed"] = job.seed + index
        if family in DIFFUSION:
            body.update(model=model, negative_prompt=job.negative_prompt or "")
        else:
            body["prompt"] = with_negative(job.prompt, job.negative_prompt)
        if job.operation == "edit":
            if family not in DIFFUSION:
                raise PermanentFailure(f"getimg model {model} cannot transform images; use a "
                                       "stable-diffusion or a v2 model", code="invalid_request")
            body.update(image=_b64(job.sources[0]), strength=job.strength)
            return await self._v1_image(f"/v1/{family}/image-to-image", body)
        body.update(width=_side(job.width, family, 1024), height=_side(job.height, family, 1024))
        return await self._v1_image(f"/v1/{family}/text-to-image", body)

    async def _v2(self, job: ImageJob, model: str) -> bytes:
        body: dict[str, Any] = {
            "model": model, "prompt": with_negative(job.prompt, job.negative_prompt),
            "aspect_ratio": nearest_ratio(job.width, job.height, V2_RATIOS),
            "output_format": job.output_format}
        if job.operation == "edit":
            body["images"] = [f"data:{CONTENT_TYPES[sniff_format(s)]};base64,{_b64(s)}"
                              for s in job.sources]
        answer = await self._post("/v2/images/generations", body)
        items = answer.get("data")
        if not isinstance(items, list) or not items or not isinstance(items[0], dict) or (
                not isinstance(items[0].get("url"), str)):
            raise TransientFailure("getimg v2 answered without an image URL")
        return await self._download(items[0]["url"])

    async def _v1_image(self, path: str, body: dict[str, Any]) -> bytes:
        answer = await self._post(path, body)
        encoded = answer.get("image")
        if not isinstance(encoded, str):
            raise TransientFailure(f"getimg {path} answered without an image")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise TransientFailure(f"getimg {path} answered with broken base64") from None

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.post(self._base + path, json=body,
                                               headers={**self._auth, **outgoing()})
        except httpx2.TimeoutException:
            raise TransientFailure(f"getimg {path} timed out", code="timeout") from None
        except httpx2.HTTPError as err:
            raise TransientFailure(f"getimg unreachable: {err}") from None
        if response.status_code != 200:
            raise translate_status(response)
        try:
            answer = response.json()
        except ValueError:
            raise TransientFailure(f"getimg {path} answered with invalid JSON") from None
        if not isinstance(answer, dict):
            raise TransientFailure(f"getimg {path} answered with invalid JSON")
        return answer

    async def _download(self, url: str) -> bytes:
        """Fetch a temporary URL now, with two quick retries for a glitch in between."""
        if not url.startswith(("https://", "http://")):
            raise TransientFailure("getimg v2 answered with a non-HTTP image URL")
        retrying = AsyncRetrying(stop=stop_after_attempt(3), reraise=True,
                                 wait=wait_exponential(multiplier=0.2, max=1),
                                 retry=retry_if_exception_type(_DownloadGlitch))
        try:
            return await retrying(self._download_once, url)
        except _DownloadGlitch as err:
            raise TransientFailure(f"getimg image download failed: {err}") from None

    async def _download_once(self, url: str) -> bytes:
        try:
            async with self._client.stream("GET", url) as response:
                if response.status_code >= 500:
                    raise _DownloadGlitch(f"HTTP {response.status_code}")
                if response.status_code != 200:  # expired or gone: only a new generation helps
                    raise TransientFailure(f"getimg image URL answered {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > MAX_DOWNLOAD_BYTES:
                        raise TransientFailure("getimg image is larger than "
                                               f"{MAX_DOWNLOAD_BYTES} bytes")
                return bytes(body)
        except httpx2.TransportError as err:
            raise _DownloadGlitch(str(err) or type(err).__name__) from None
