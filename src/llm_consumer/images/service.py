"""What image handlers use: the configured providers, the source loader and the checked store."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from llm_consumer.errors import InvalidRequest, PermanentFailure, TransientFailure
from llm_consumer.events.requests import SourceImage
from llm_consumer.events.results import ImageQuality, StoredImage
from llm_consumer.images.fetch import SourceFetcher
from llm_consumer.images.processing import (
    CONTENT_TYPES,
    Decoded,
    OutputFormat,
    UnreadableImage,
    as_format,
    decode,
)
from llm_consumer.images.quality import RGB, Assessment, BlankImage, assess, hex_colour
from llm_consumer.images.storage import ImageStore, image_key
from llm_consumer.providers.images_base import ImageProvider, gather_or_raise

PROVIDER_KEYS = {"getimg": "GETIMG_API_KEY", "openai": "OPENAI_API_KEY"}


def checked_output(data: bytes, provider: str) -> Decoded:
    """A provider's image, decoded; a provider that sends garbage may do better next time."""
    try:
        return decode(data)
    except UnreadableImage as err:
        raise TransientFailure(f"{provider} answered with an unusable image: {err}") from None


def _measure(index: int, image: Decoded, fmt: OutputFormat,
             palette: tuple[RGB, ...]) -> tuple[Assessment, bytes]:
    """CPU work, run in a thread: the checks and the encoding in the requested format."""
    try:
        return assess(image.image, palette), as_format(image, fmt)
    except BlankImage as err:
        raise TransientFailure(f"image {index} failed its check: {err}") from None


@dataclass(frozen=True, slots=True)
class ImageService:
    providers: Mapping[str, ImageProvider]  # only the configured ones
    default_provider: str
    store: ImageStore
    fetcher: SourceFetcher

    def provider_for(self, name: str | None) -> ImageProvider:
        chosen = name or self.default_provider
        provider = self.providers.get(chosen)
        if provider is None:
            raise PermanentFailure(
                f"image provider {chosen} is not configured: set {PROVIDER_KEYS[chosen]}",
                code="no_provider")
        return provider

    async def load_source(self, source: SourceImage) -> Decoded:
        """The bytes of a request's source image, checked like any image the service reads."""
        if source.ref:
            data = await self.store.get(source.ref, max_bytes=self.fetcher.policy.max_bytes)
        elif source.data:
            data = self.fetcher.decode_base64(source.data)
        else:
            assert source.url is not None  # SourceImage holds exactly one of the three
            data = await self.fetcher.fetch(source.url)
        try:
            return await asyncio.to_thread(decode, data)
        except UnreadableImage as err:
            raise InvalidRequest(f"source_image: {err}") from None

    async def keep(self, request_id: str, images: list[Decoded], fmt: OutputFormat,
                   palette: tuple[RGB, ...]) -> list[StoredImage]:
        """Check and encode every image, then store each under its deterministic key.

        All checks come first, so a request whose images fail stores nothing.
        """
        checked = await gather_or_raise([asyncio.to_thread(_measure, index, image, fmt, palette)
                                         for index, image in enumerate(images)])
        keys = [image_key(request_id, index, fmt) for index in range(len(images))]
        urls = await gather_or_raise([self.store.put(key, data, CONTENT_TYPES[fmt])
                                      for key, (_, data) in zip(keys, checked, strict=True)])
        return [StoredImage(
            url=url, key=key, content_type=CONTENT_TYPES[fmt], width=image.width,
            height=image.height, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
            quality=ImageQuality(format=fmt, contrast=measured.contrast,
                                 dominant_colors=[hex_colour(c) for _, c in measured.dominant],
                                 palette_distance=measured.palette_distance))
            for url, key, image, (measured, data) in zip(urls, keys, images, checked, strict=True)]

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
        await self.fetcher.aclose()
        await self.store.aclose()
