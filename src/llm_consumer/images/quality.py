"""Checks every produced image passes, and how close its colours are to the theme palette.

A blank or uniform picture (a filtered answer, a broken decode) is refused. The palette distance
is the share-weighted mean, over the image's dominant colours, of the CIE76 colour difference
(Euclidean distance in CIELAB) to the nearest palette colour: about 2 is a just-noticeable
difference, 10-25 is "the same family of colours", above 40 the colours are unrelated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm_consumer.lazy import lazy_module

if TYPE_CHECKING:
    from PIL import Image, ImageStat
else:  # loaded by the first image a worker handles
    Image, ImageStat = lazy_module("PIL.Image"), lazy_module("PIL.ImageStat")

RGB = tuple[int, int, int]

SAMPLE_SIDE = 64  # images are judged on a thumbnail: fast, and blind to pixel noise
DOMINANT_COLOURS = 5
MIN_CONTRAST = 2.0  # largest per-channel standard deviation (0-255) of a non-uniform image


class BlankImage(ValueError):
    """The image is (nearly) one colour."""


@dataclass(frozen=True, slots=True)
class Assessment:
    contrast: float
    dominant: tuple[tuple[float, RGB], ...]  # (share of pixels, colour), largest share first
    palette_distance: float | None


def assess(image: Image.Image, palette: tuple[RGB, ...]) -> Assessment:
    """Measure `image`; raise BlankImage when it carries no picture."""
    sample = _sample(image)
    contrast = _contrast(sample)
    dominant = dominant_colours(sample)
    distance = palette_distance(dominant, palette) if palette else None
    return Assessment(contrast=round(contrast, 2), dominant=dominant, palette_distance=distance)


def require_picture(image: Image.Image) -> None:
    """Raise BlankImage when `image` is (nearly) one colour."""
    _contrast(_sample(image))


def _sample(image: Image.Image) -> Image.Image:
    sample = image.convert("RGB")
    sample.thumbnail((SAMPLE_SIDE, SAMPLE_SIDE), Image.Resampling.BILINEAR)
    return sample


def _contrast(sample: Image.Image) -> float:
    contrast = max(ImageStat.Stat(sample).stddev)
    if contrast < MIN_CONTRAST:
        raise BlankImage(f"the image is uniform (colour spread {contrast:.1f} of 255)")
    return float(contrast)


def dominant_colours(sample: Image.Image) -> tuple[tuple[float, RGB], ...]:
    quantized = sample.quantize(colors=DOMINANT_COLOURS, method=Image.Quantize.MEDIANCUT)
    flat = quantized.getpalette() or []
    counts = quantized.getcolors() or []
    total = sum(count for count, _ in counts) or 1
    found = []
    for count, index in sorted(counts, key=lambda item: -item[0]):
        assert isinstance(index, int)
        found.append((count / total, (flat[3 * index], flat[3 * index + 1], flat[3 * index + 2])))
    return tuple(found)


def palette_distance(dominant: tuple[tuple[float, RGB], ...], palette: tuple[RGB, ...]) -> float:
    targets = [to_lab(colour) for colour in palette]
    weighted = sum(share * min(math.dist(to_lab(colour), t) for t in targets)
                   for share, colour in dominant)
    return round(weighted / (sum(share for share, _ in dominant) or 1), 2)


def to_lab(colour: RGB) -> tuple[float, float, float]:
    """sRGB (D65) to CIELAB."""
    linear = [_linear(channel / 255) for channel in colour]
    x = (0.4124 * linear[0] + 0.3576 * linear[1] + 0.1805 * linear[2]) / 0.95047
    y = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    z = (0.0193 * linear[0] + 0.1192 * linear[1] + 0.9505 * linear[2]) / 1.08883
    fx, fy, fz = (_f(v) for v in (x, y, z))
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def _linear(value: float) -> float:
    return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4


def _f(t: float) -> float:
    return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29


def hex_colour(colour: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)
