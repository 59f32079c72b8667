"""OpenAI images (GPT image models) through the openai SDK: generations and edits.

The SDK is imported, and its client made, on the first image asked of OpenAI: a process that
serves text only never loads it (about 19 MB of RSS per process).

Edits send every source as an `image[]` part of one multipart request. OpenAI has no upscaler
or face restorer, so `upscale` and `face_fix` are edits with a restoring prompt whose answer is
resampled to the size the step promises (twice the source's, or the source's own): GPT image
models answer only at 1024 or 1536 px a side.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Mapping
from typing import TYPE_CHECKING

from llm_consumer.errors import PermanentFailure, ServiceError, TransientFailure
from llm_consumer.images.processing import (
    CONTENT_TYPES,
    EXTENSIONS,
    UnreadableImage,
    decode,
    encode,
    resized,
    sniff_format,
)
from llm_consumer.providers.images_base import ImageJob, ImageResult, with_negative
from llm_consumer.providers.openai_errors import translate_error as translate_text_error
from llm_consumer.providers.openai_sdk import LazyClient
from llm_consumer.tracing import outgoing

if TYPE_CHECKING:
    import openai
    from openai.types import ImagesResponse

ENHANCE_PROMPTS = {
    "upscale": "Reproduce this exact image at higher fidelity: the same composition, subjects, "
               "colours and style; sharpen fine detail and remove blur, noise and artifacts.",
    "face_fix": "Restore the faces in this image: natural, well-formed features, clear eyes, "
                "the same identity, expression and pose; change nothing else.",
}
_POLICY_CODES = frozenset({"moderation_blocked", "content_policy_violation"})
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})


def translate_error(err: openai.OpenAIError, model: str) -> ServiceError:
    """Image-specific codes first; everything else as for chat completions."""
    import openai

    if isinstance(err, openai.APIStatusError):
        body = err.body if isinstance(err.body, Mapping) else {}
        code = err.code or str(body.get("code") or "")
        message = str(body.get("message") or err.message)
        if code in _POLICY_CODES:
            return PermanentFailure(f"openai images refused the request: {message}",
                                    code="content_policy")
        if code in _QUOTA_CODES:
            return PermanentFailure(f"openai images: {message}", code="quota_exhausted")
        if err.status_code in (401, 403):
            return PermanentFailure(f"openai rejected OPENAI_API_KEY ({err.status_code}): "
                                    f"{message}", code="no_provider")
    return translate_text_error(err, model)


def openai_size(width: int | None, height: int | None) -> str:
    """The GPT image size of the same orientation as width x height."""
    if not width or not height:
        return "auto"
    ratio = width / height
    if ratio > 1.2:
        return "1536x1024"
    if ratio < 1 / 1.2:
        return "1024x1536"
    return "1024x1024"


class OpenAIImageProvider:
    name = "openai"

    def __init__(self, api_key: str, *, base_url: str | None, model: str,
                 timeout_s: float) -> None:
        self.model = model
        self._sdk = LazyClient(api_key, base_url, timeout_s)

    async def aclose(self) -> None:
        await self._sdk.aclose()

    async def run(self, job: ImageJob) -> ImageResult:
        import openai
        from openai.types import ImagesResponse

        model = job.model or self.model
        size = openai_size(job.width, job.height)
        client = self._sdk.get()
        try:
            if job.operation == "generate":
                response = await client.images.generate(
                    model=model, prompt=with_negative(job.prompt, job.negative_prompt),
                    n=job.count, size=size, output_format=job.output_format,
                    extra_headers=outgoing())
            else:
                prompt = ENHANCE_PROMPTS.get(job.operation) or with_negative(
                    job.prompt, job.negative_prompt)
                files = [(f"source-{i}.{EXTENSIONS[sniff_format(data)]}", data,
                          CONTENT_TYPES[sniff_format(data)]) for i, data in enumerate(job.sources)]
                response = await client.images.edit(
                    model=model, image=files, prompt=prompt, n=job.count, size=size,
                    output_format=job.output_format, extra_headers=outgoing())
        except openai.OpenAIError as err:
            raise translate_error(err, model) from err
        assert isinstance(response, ImagesResponse)  # not streamed
        images = _images(response)
        if job.operation in ENHANCE_PROMPTS and job.width and job.height:
            factor = 2 if job.operation == "upscale" else 1
            target = (job.width * factor, job.height * factor)
            images = await asyncio.to_thread(
                lambda: tuple(_resized(image, target, job) for image in images))
        return ImageResult(images, model)


def _images(response: ImagesResponse) -> tuple[bytes, ...]:
    found = []
    for item in response.data or []:
        if not item.b64_json:
            raise TransientFailure("openai images answered without b64_json image data")
        try:
            found.append(base64.b64decode(item.b64_json, validate=True))
        except (binascii.Error, ValueError):
            raise TransientFailure("openai images answered with broken base64") from None
    if not found:
        raise TransientFailure("openai images answered with no image")
    return tuple(found)


def _resized(data: bytes, size: tuple[int, int], job: ImageJob) -> bytes:
    """An enhanced image at the size its step promises (the source's, or twice it)."""
    try:
        decoded = decode(data)
    except UnreadableImage as err:
        raise TransientFailure(f"openai images answered with an unreadable image: {err}") from None
    if decoded.image.size == size:
        return data
    return encode(resized(decoded.image, size), job.output_format)
