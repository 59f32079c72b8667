"""Decoding, re-encoding and grid handling with Pillow.

Every image the service reads, a source or a provider's answer, passes through `decode`, which
checks the format and the dimensions from the header before a single pixel is decompressed.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from PIL import UnidentifiedImageError

from llm_consumer.lazy import lazy_module

if TYPE_CHECKING:
    from PIL import Image, ImageChops
else:  # loaded by the first image a worker handles
    Image, ImageChops = lazy_module("PIL.Image"), lazy_module("PIL.ImageChops")

OutputFormat = Literal["png", "jpeg", "webp"]

_PIL_FORMATS: dict[str, OutputFormat] = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
CONTENT_TYPES: dict[OutputFormat, str] = {
    "png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS: dict[OutputFormat, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
MIN_SIDE = 64
MAX_SIDE = 8192
MAX_PIXELS = 4096 * 4096  # bounds what a stored file can weigh; far below Pillow's bomb limit
TRIM_TOLERANCE = 24  # channel difference from the border colour still counted as border


class UnreadableImage(ValueError):
    """Not an image this service accepts: unknown format, corrupt, or out of bounds."""


@dataclass(frozen=True, slots=True)
class Decoded:
    image: Image.Image
    format: OutputFormat
    data: bytes

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def decode(data: bytes) -> Decoded:
    """Open and fully decode PNG, JPEG or WebP bytes within the size bounds."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = _PIL_FORMATS.get(image.format or "")
            if fmt is None:
                raise UnreadableImage(f"unsupported image format {image.format or 'unknown'}")
            check_dimensions(image.width, image.height)
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        raise UnreadableImage(f"not a readable image: {err}") from None
    return Decoded(image=image, format=fmt, data=data)


def check_dimensions(width: int, height: int) -> None:
    if min(width, height) < MIN_SIDE:
        raise UnreadableImage(f"image is {width}x{height}, smaller than {MIN_SIDE} px a side")
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise UnreadableImage(f"image is {width}x{height}, over the {MAX_SIDE} px / "
                              f"{MAX_PIXELS / 1e6:.1f} Mpx limit")


def encode(image: Image.Image, fmt: OutputFormat) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buffer, "JPEG", quality=92)
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=90)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def as_format(decoded: Decoded, fmt: OutputFormat) -> bytes:
    """The bytes of `decoded` in `fmt`, untouched when they already are."""
    return decoded.data if decoded.format == fmt else encode(decoded.image, fmt)


def split_grid(image: Image.Image, rows: int, cols: int) -> list[Image.Image]:
    """Cut a rows x cols grid into its cells (left to right, top to bottom), each trimmed."""
    cell_w, cell_h = image.width // cols, image.height // rows
    cells = []
    for row in range(rows):
        for col in range(cols):
            box = (col * cell_w, row * cell_h, (col + 1) * cell_w, (row + 1) * cell_h)
            cells.append(trim(image.crop(box)))
    return cells


def _border_colour(rgb: Image.Image) -> tuple[int, int, int] | None:
    """The colour of at least three corners: a cell of a grid touches gutters on two sides."""
    w, h = rgb.width - 1, rgb.height - 1
    corners: list[tuple[int, int, int]] = [
        rgb.getpixel(xy) for xy in ((0, 0), (w, 0), (0, h), (w, h))]  # type: ignore[misc]
    for candidate in corners:
        close = [c for c in corners
                 if max(abs(a - b) for a, b in zip(c, candidate, strict=True)) <= TRIM_TOLERANCE]
        if len(close) >= 3:
            return candidate
    return None


def trim(image: Image.Image) -> Image.Image:
    """Remove a uniform border (the gutter of a grid), keeping at least half of each side."""
    rgb = image.convert("RGB")
    colour = _border_colour(rgb)
    if colour is None:
        return image
    background = Image.new("RGB", rgb.size, colour)
    red, green, blue = ImageChops.difference(rgb, background).split()
    largest = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    mask = largest.point(lambda value: 255 if value > TRIM_TOLERANCE else 0)
    box = mask.getbbox()
    if box is None:
        return image
    left, top, right, bottom = box
    if (right - left) * 2 < image.width or (bottom - top) * 2 < image.height:
        return image  # the "border" is most of the picture: not a gutter
    return image.crop(box)


def tile(image: Image.Image, rows: int, cols: int, cell: tuple[int, int]) -> Image.Image:
    """A rows x cols grid of copies of `image` resized to `cell` (input of a variations grid)."""
    small = image.convert("RGB").resize(cell, Image.Resampling.LANCZOS)
    grid = Image.new("RGB", (cell[0] * cols, cell[1] * rows))
    for row in range(rows):
        for col in range(cols):
            grid.paste(small, (col * cell[0], row * cell[1]))
    return grid


def resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` scaled to `size` (Lanczos)."""
    return image.resize(size, Image.Resampling.LANCZOS)


def fit_within(decoded: Decoded, max_side: int) -> Decoded:
    """`decoded`, or a PNG copy scaled down (Lanczos) so that its longest side is `max_side`."""
    scale = max_side / max(decoded.width, decoded.height)
    if scale >= 1:
        return decoded
    size = (max(1, round(decoded.width * scale)), max(1, round(decoded.height * scale)))
    smaller = decoded.image.resize(size, Image.Resampling.LANCZOS)
    return Decoded(smaller, "png", encode(smaller, "png"))


def sniff_format(data: bytes) -> OutputFormat:
    """The format of encoded bytes from their signature (they were decoded before: one of 3)."""
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "png"
