"""What image handlers use: the configured providers, the source loader and the checked store.

Every image belongs to the caller that made it: it is stored under the caller's owner tag (see
`storage.py`), and a `source_image.ref` reads only the reader's own images (an `llm:admin`
caller reads any). A foreign key is answered exactly like a missing one.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from llm_consumer import tracing
from llm_consumer.auth import Principal
from llm_consumer.errors import InvalidRequest, PermanentFailure, TransientFailure
from llm_consumer.events.requests import SourceImage
from llm_consumer.events.results import ImageQuality, StoredImage
from llm_consumer.identity import owner_tag
from llm_consumer.images.fetch import SourceFetcher
from llm_consumer.images.processing import (
    CONTENT_TYPES,
    Decoded,
    OutputFormat,
    UnreadableImage,
    as_format,
    decode,
)
from llm_consumer.images.quality import (
    RGB,
    Assessment,
    BlankImage,
    assess,
    hex_colour,
    require_picture,
)
from llm_consumer.images.storage import (
    ImageStore,
    KeyTaken,
    image_key,
    new_folder,
    no_image,
    owner_of,
)
from llm_consumer.providers.images_base import ImageProvider, gather_or_raise

PROVIDER_KEYS = {"getimg": "GETIMG_API_KEY", "openai": "OPENAI_API_KEY"}
ADMIN_PERMISSION = "llm:admin"


def checked_output(data: bytes, provider: str) -> Decoded:
    """A provider's image, decoded and checked before anything more is paid for it.

    Garbage may be a glitch that another attempt fixes (transient). A blank picture is what
    providers' safety filters answer (a black image): asking again pays for the same answer,
    so it is final, as `content_policy`.
    """
    try:
        image = decode(data)
    except UnreadableImage as err:
        raise TransientFailure(f"{provider} answered with an unusable image: {err}") from None
    try:
        require_picture(image.image)
    except BlankImage as err:
        raise _blank(f"{provider} answered a blank image", err) from None
    return image


def _blank(what: str, err: BlankImage) -> PermanentFailure:
    return PermanentFailure(f"{what}: {err}; a safety filter answers so, not retried",
                            code="content_policy")


def _measure(index: int, image: Decoded, fmt: OutputFormat,
             palette: tuple[RGB, ...]) -> tuple[Assessment, bytes]:
    """CPU work, run in a thread: the checks and the encoding in the requested format."""
    try:
        return assess(image.image, palette), as_format(image, fmt)
    except BlankImage as err:
        raise _blank(f"image {index} is blank", err) from None


@dataclass(frozen=True, slots=True)
class Caller:
    """Whose images a request stores (`owner`, a tag) and which it may read."""

    owner: str
    reads_any: bool = False  # llm:admin

    def may_read(self, key: str) -> bool:
        return self.reads_any or owner_of(key) == self.owner


@dataclass(frozen=True, slots=True)
class ImageService:
    providers: Mapping[str, ImageProvider]  # only the configured ones
    default_provider: str
    store: ImageStore
    fetcher: SourceFetcher
    owner_key: bytes  # identity.derive_key(SECRET_KEY, "image-owner")

    def caller(self, principal: Principal) -> Caller:
        return Caller(owner_tag(self.owner_key, principal.subject),
                      reads_any=principal.allows(ADMIN_PERMISSION))

    def provider_for(self, name: str | None) -> ImageProvider:
        chosen = name or self.default_provider
        provider = self.providers.get(chosen)
        if provider is None:
            raise PermanentFailure(
                f"image provider {chosen} is not configured: set {PROVIDER_KEYS[chosen]}",
                code="no_provider")
        return provider

    def model_for(self, provider: str | None, model: str | None) -> str:
        """The model a request names, else the default model of its provider (the configured
        default provider when it names none); the provider's name when it is not configured
        (such a request fails before any call)."""
        if model:
            return model
        chosen = provider or self.default_provider
        configured = self.providers.get(chosen)
        return configured.model if configured is not None else chosen

    async def load_source(self, source: SourceImage, caller: Caller) -> Decoded:
        """The bytes of a request's source image, checked like any image the service reads.

        A `ref` to another caller's image is refused before the store is asked, with the
        same words as a key that holds nothing."""
        if source.ref:
            if not caller.may_read(source.ref):
                raise no_image(source.ref)
            with tracing.stage("llm.storage.get"):
                data = await self.store.get(source.ref,
                                            max_bytes=self.fetcher.policy.max_bytes)
        elif source.data:
            data = self.fetcher.decode_base64(source.data)
        else:
            assert source.url is not None  # SourceImage holds exactly one of the three
            data = await self.fetcher.fetch(source.url)
        try:
            return await asyncio.to_thread(decode, data)
        except UnreadableImage as err:
            raise InvalidRequest(f"source_image: {err}") from None

    async def keep(self, caller: Caller, images: list[Decoded], fmt: OutputFormat,
                   palette: tuple[RGB, ...]) -> list[StoredImage]:
        """Check and encode every image, then store each under a new key of the caller's.

        All checks come first, so a request whose images fail stores nothing. The keys are in
        a new random folder; should the store already hold one of them (a collision of 128
        random bits), the images go to another new folder once more.
        """
        checked = await gather_or_raise([asyncio.to_thread(_measure, index, image, fmt, palette)
                                         for index, image in enumerate(images)])
        encoded = [data for _, data in checked]
        try:
            keys, urls = await self._put_new(caller.owner, encoded, fmt)
        except KeyTaken:
            keys, urls = await self._put_new(caller.owner, encoded, fmt)
        return [StoredImage(
            url=url, key=key, content_type=CONTENT_TYPES[fmt], width=image.width,
            height=image.height, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
            quality=ImageQuality(format=fmt, contrast=measured.contrast,
                                 dominant_colors=[hex_colour(c) for _, c in measured.dominant],
                                 palette_distance=measured.palette_distance))
            for url, key, image, (measured, data) in zip(urls, keys, images, checked, strict=True)]

    async def _put_new(self, owner: str, encoded: list[bytes],
                       fmt: OutputFormat) -> tuple[list[str], list[str]]:
        folder = new_folder()
        keys = [image_key(owner, folder, index, fmt) for index in range(len(encoded))]
        with tracing.stage("llm.storage.put", images=len(encoded),
                           bytes=sum(len(data) for data in encoded)):
            urls = await gather_or_raise([self.store.put(key, data, CONTENT_TYPES[fmt])
                                          for key, data in zip(keys, encoded, strict=True)])
        return keys, urls

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
        await self.fetcher.aclose()
        await self.store.aclose()
