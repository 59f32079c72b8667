"""The seam between the image pipeline and image providers (GetImg.AI, OpenAI images)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from llm_consumer.errors import ServiceError
from llm_consumer.images.processing import OutputFormat

T = TypeVar("T")

Operation = Literal["generate", "edit", "upscale", "face_fix"]


@dataclass(frozen=True, slots=True)
class ImageJob:
    """One provider call. `edit` and the enhancements read `sources` (image bytes)."""

    operation: Operation
    prompt: str = ""
    negative_prompt: str | None = None
    sources: tuple[bytes, ...] = ()
    width: int | None = None
    height: int | None = None
    count: int = 1
    seed: int | None = None
    output_format: OutputFormat = "png"
    model: str | None = None
    strength: float = 0.6  # edit: how far the result may move from the source (0-1)


@dataclass(frozen=True, slots=True)
class ImageResult:
    images: tuple[bytes, ...]  # encoded images, as the provider sent them
    model_used: str


class ImageProvider(Protocol):
    name: str
    model: str  # the model a job without `model` uses

    async def run(self, job: ImageJob) -> ImageResult:
        """Run one job; raise llm_consumer.errors.* on failure."""
        ...

    async def aclose(self) -> None: ...


def with_negative(prompt: str, negative: str | None) -> str:
    """For models without a negative prompt: the exclusions said in words."""
    return f"{prompt} Avoid: {negative}." if negative else prompt


def nearest_ratio(width: int | None, height: int | None, ratios: tuple[str, ...]) -> str:
    """The aspect ratio among `ratios` ("W:H") closest to width/height (square when unknown)."""
    wanted = (width / height) if width and height else 1.0

    def gap(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(int(w) / int(h) - wanted)

    return min(ratios, key=gap)


async def gather_or_raise(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Run `calls` together; the first ServiceError cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_await(call)) for call in calls]
    except* ServiceError as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def _await(call: Awaitable[T]) -> T:
    return await call
