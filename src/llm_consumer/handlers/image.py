"""Image kinds: text to image, transform, enhance and variations, ending in `image.generated`.

Every image a provider returns is decoded and checked before it is stored; the event carries
what a peer needs to fetch and verify it (url, key, size, sha256) and the quality report.

Every provider call is paid from the request's call budget (`Request.calls`, capped across the
message's attempts) right before it is made, counted as the HTTP calls it really costs. An
attempt whose whole plan does not fit in what is left fails before its first call. The largest
attempts: `count` 4 with both enhance steps, 4 + 4 x 2 = 12 calls on GetImg, 1 + 4 x 2 = 9 on
OpenAI; variations 8 (two grids) with both steps, 2 + 8 x 2 = 18 (over the default cap of 16:
refused before the first call); enhance: 2.

A transform may take several sources (`source_image` as a list): each is loaded and owner-checked
alone, and all go to one edit (OpenAI's repeated `image[]` field, GetImg v2's `images`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

from llm_consumer import tracing
from llm_consumer.errors import InvalidRequest, PermanentFailure, TransientFailure
from llm_consumer.events import catalog
from llm_consumer.events.requests import (
    TEXT_TO_IMAGE_KINDS,
    ImageKind,
    ImageRequested,
    SourceImage,
)
from llm_consumer.events.results import ImageGenerated
from llm_consumer.handlers.base import CallBudget, Deps, Reply, Request
from llm_consumer.images.processing import (
    Decoded,
    UnreadableImage,
    check_dimensions,
    encode,
    fit_within,
    split_grid,
    tile,
)
from llm_consumer.images.prompting import GRID_COLS, GRID_ROWS, build_image_prompt
from llm_consumer.images.service import Caller, ImageService, checked_output
from llm_consumer.images.visual_themes import VisualLook, resolve_visual_theme
from llm_consumer.lazy import load_now
from llm_consumer.providers.images_base import (
    ImageJob,
    ImageProvider,
    Operation,
    gather_or_raise,
)

DEFAULT_SIZES = {ImageKind.PORTRAIT: (768, 1024), ImageKind.LOCATION: (1216, 832),
                 ImageKind.ITEM: (1024, 1024)}
GRID_CELL_SIDE = 512  # longest side of one panel of a variations grid
MAX_TRANSFORM_SIDE = 1536  # larger sources are scaled down before a transform
UPSCALE_FACTOR = 2  # what both providers' upscale step gives
GRID_PANELS = GRID_ROWS * GRID_COLS
VARIATIONS_DEFAULT = GRID_PANELS  # panels a variations request gets without `count`
PER_IMAGE_CALLS = frozenset({"getimg"})  # providers that make one HTTP call per image


@dataclass(frozen=True, slots=True)
class Produced:
    images: list[Decoded]
    models: tuple[str, ...]
    prompt: str | None = None


@dataclass(frozen=True, slots=True)
class Metered:
    """A provider whose every call is paid from the request's call budget before it is made."""

    provider: ImageProvider
    calls: CallBudget

    @property
    def name(self) -> str:
        return self.provider.name

    async def run(self, job: ImageJob) -> tuple[list[Decoded], str]:
        self.calls.spend(provider_calls(self.provider.name, job))
        with tracing.stage("llm.provider.call", provider=self.provider.name,
                           operation=job.operation, images=job.count), self.calls.timing():
            result = await self.provider.run(job)
        return (await asyncio.to_thread(_checked_all, result.images, self.provider.name),
                result.model_used)


def provider_calls(provider: str, job: ImageJob) -> int:
    """The HTTP calls `job` costs: GetImg makes one per image, OpenAI one for all `n` of them
    (GetImg v2's download of its temporary URL is not a paid call and is not counted)."""
    return job.count if provider in PER_IMAGE_CALLS else 1


def planned_calls(data: ImageRequested, provider: str) -> int:
    """The provider calls one attempt makes when all goes well: the generation (none for the
    enhance kind), then each enhance step for each image."""
    options = data.options
    if data.kind == ImageKind.ENHANCE:
        return len(options.enhance or ["upscale"])
    steps = len(options.enhance or [])
    if data.kind == ImageKind.VARIATIONS:
        wanted = _variations_wanted(data)
        return grids_for(wanted) + wanted * steps
    generation = provider_calls(provider, ImageJob("generate", count=options.count))
    return generation + options.count * steps


def _variations_wanted(data: ImageRequested) -> int:
    options = data.options
    return options.count if "count" in options.model_fields_set else VARIATIONS_DEFAULT


def grids_for(panels: int) -> int:
    """Grid generations that give `panels` variations (a grid holds GRID_PANELS)."""
    return math.ceil(panels / GRID_PANELS)


def _image_request(request: Request) -> ImageRequested:
    assert isinstance(request.data, ImageRequested)
    return request.data


def _check_plan(data: ImageRequested, provider: str, calls: CallBudget) -> None:
    needed = planned_calls(data, provider)
    if needed > calls.left:
        raise PermanentFailure(
            f"request needs {needed} provider calls, {calls.left} left of its cap of "
            f"{calls.limit} across its attempts (MAX_PROVIDER_CALLS_PER_REQUEST)",
            code="quota_exhausted")


async def handle_image(request: Request, deps: Deps) -> list[Reply]:
    load_now()  # Pillow, before any thread reads it (lazy.py)
    data = _image_request(request)
    service = deps.images
    if service is None:
        raise PermanentFailure("no image service is configured in this process",
                               code="no_provider")
    chosen = service.provider_for(data.options.provider)
    _check_plan(data, chosen.name, request.calls)
    provider = Metered(chosen, request.calls)
    caller = service.caller(request.principal)
    look = resolve_visual_theme(data.theme)
    if data.kind in TEXT_TO_IMAGE_KINDS:
        produced = await _text_to_image(data, look, provider)
    else:
        sources = await _sources(data, service, caller)
        if data.kind == ImageKind.ENHANCE:
            produced = await _enhance(data, sources, provider,
                                      data.options.enhance or ["upscale"])
        elif data.kind == ImageKind.TRANSFORM:
            produced = await _transform(data, look, provider, sources)
        else:
            produced = await _variations(data, look, provider, sources[0])
    if data.options.enhance and data.kind != ImageKind.ENHANCE:
        enhanced = await _enhance(data, produced.images, provider, data.options.enhance)
        produced = Produced(enhanced.images, produced.models + enhanced.models, produced.prompt)
    stored = await service.keep(caller, produced.images, data.options.output_format,
                                look.palette)
    return [Reply(catalog.IMAGE_GENERATED, ImageGenerated(
        request_id=request.id, kind=data.kind.value, images=stored, provider=chosen.name,
        model_used="+".join(dict.fromkeys(produced.models)), prompt=produced.prompt,
        palette=look.palette_hex, duration_ms=request.elapsed_ms()))]


async def _sources(data: ImageRequested, service: ImageService,
                   caller: Caller) -> list[Decoded]:
    """Every source, each loaded and owner-checked alone (the request model requires one)."""
    sources = data.sources
    assert sources

    async def load(index: int, source: SourceImage) -> Decoded:
        try:
            return await service.load_source(source, caller)
        except InvalidRequest as err:
            if len(sources) == 1:
                raise
            raise InvalidRequest(f"source_image[{index}]: {err.message}") from None

    return await gather_or_raise([load(i, source) for i, source in enumerate(sources)])


def _checked_all(images: Sequence[bytes], provider: str) -> list[Decoded]:
    """Decoding is CPU work: it runs in a thread (Pillow releases the GIL) off the event loop."""
    return [checked_output(image, provider) for image in images]


async def _text_to_image(data: ImageRequested, look: VisualLook,
                         provider: Metered) -> Produced:
    prompt = build_image_prompt(data, look)
    width, height = DEFAULT_SIZES[data.kind]
    options = data.options
    images, model = await provider.run(ImageJob(
        "generate", prompt=prompt.text, negative_prompt=prompt.negative,
        width=options.width or width, height=options.height or height, count=options.count,
        seed=options.seed, output_format=options.output_format, model=options.model))
    return Produced(images, (model,), prompt.text)


async def _transform(data: ImageRequested, look: VisualLook, provider: Metered,
                     sources: list[Decoded]) -> Produced:
    """One edit of all the sources; the first one sets the default size."""
    prompt = build_image_prompt(data, look)
    options = data.options
    fitted = await asyncio.to_thread(
        lambda: [fit_within(source, MAX_TRANSFORM_SIDE) for source in sources])
    first = fitted[0]
    images, model = await provider.run(ImageJob(
        "edit", prompt=prompt.text, negative_prompt=prompt.negative,
        sources=tuple(source.data for source in fitted),
        width=options.width or first.width, height=options.height or first.height,
        count=options.count, seed=options.seed, output_format=options.output_format,
        model=options.model))
    return Produced(images, (model,), prompt.text)


async def _variations(data: ImageRequested, look: VisualLook, provider: Metered,
                      source: Decoded) -> Produced:
    """Grids made of the source (one per GRID_PANELS wanted, each its own generation with its
    own seed), split into their trimmed panels."""
    prompt = build_image_prompt(data, look)
    scale = GRID_CELL_SIDE / max(source.width, source.height)
    cell = (max(64, round(source.width * scale / 64) * 64),
            max(64, round(source.height * scale / 64) * 64))
    grid = await asyncio.to_thread(
        lambda: encode(tile(source.image, GRID_ROWS, GRID_COLS, cell), "png"))
    options = data.options
    wanted = _variations_wanted(data)

    async def one_grid(index: int) -> tuple[list[bytes], str]:
        [answer], model = await provider.run(ImageJob(
            "edit", prompt=prompt.text, negative_prompt=prompt.negative, sources=(grid,),
            width=cell[0] * GRID_COLS, height=cell[1] * GRID_ROWS,
            seed=None if options.seed is None else options.seed + index,
            output_format="png", model=options.model, strength=0.45))
        panels = await asyncio.to_thread(lambda: [
            encode(panel, "png") for panel in split_grid(answer.image, GRID_ROWS, GRID_COLS)])
        return panels, model

    grids = await gather_or_raise([one_grid(index) for index in range(grids_for(wanted))])
    panels = [panel for grid_panels, _ in grids for panel in grid_panels][:wanted]
    return Produced(await asyncio.to_thread(_checked_all, panels, provider.name),
                    tuple(model for _, model in grids), prompt.text)


async def _enhance(data: ImageRequested, images: list[Decoded], provider: Metered,
                   steps: Sequence[Operation]) -> Produced:
    """Each image through each step in order (upscale, face fix), each result checked."""
    models: list[str] = []
    done = []
    for image in images:
        current = image
        for step in steps:
            if step == "upscale":
                _check_upscalable(current)
            [current_next], model = await provider.run(ImageJob(
                step, sources=(current.data,), width=current.width, height=current.height,
                output_format=data.options.output_format))
            if step == "upscale" and current_next.width <= current.width:
                raise TransientFailure(f"{provider.name} upscale returned "
                                       f"{current_next.width}x{current_next.height} for a "
                                       f"{current.width}x{current.height} image")
            current = current_next
            models.append(model)
        done.append(current)
    return Produced(done, tuple(models))


def _check_upscalable(image: Decoded) -> None:
    try:
        check_dimensions(image.width * UPSCALE_FACTOR, image.height * UPSCALE_FACTOR)
    except UnreadableImage as err:
        raise InvalidRequest(
            f"cannot upscale a {image.width}x{image.height} image: {err}") from None


IMAGE_HANDLERS = {kind: handle_image for kind in ImageKind}
