"""Pictures for the image tests, painted with Pillow from a prompt.

The hex colours named in a prompt (a theme palette) colour the picture, so a service's palette
distance can be checked; without them the colours come from the prompt's hash.
"""

from __future__ import annotations

import hashlib
import io
import re
import secrets

from PIL import Image, ImageDraw, ImageOps

_HEX = re.compile(r"#[0-9a-fA-F]{6}\b")
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def palette_of(prompt: str) -> list[tuple[int, int, int]]:
    """The hex colours named in the prompt, or three colours derived from its hash."""
    named = [tuple(int(h[i:i + 2], 16) for i in (1, 3, 5)) for h in _HEX.findall(prompt)]
    if len(named) >= 2:
        return named  # type: ignore[return-value]
    digest = hashlib.sha256(prompt.encode()).digest()
    return [(digest[i], digest[i + 1], digest[i + 2]) for i in (0, 3, 6)]


def paint(prompt: str, width: int, height: int, seed: int = 0) -> Image.Image:
    colours = palette_of(prompt)
    mask = Image.linear_gradient("L").resize((width, height))
    image = Image.composite(Image.new("RGB", (width, height), colours[1]),
                            Image.new("RGB", (width, height), colours[0]), mask)
    draw = ImageDraw.Draw(image)
    for i, colour in enumerate(colours[2:] + colours[:1]):
        x = (seed * 37 + i * width // 5) % max(1, width // 2)
        y = (seed * 53 + i * height // 4) % max(1, height // 2)
        draw.ellipse((x, y, x + width // 3, y + height // 3), fill=colour)
    return image


def tint(source: Image.Image, prompt: str, size: tuple[int, int] | None = None) -> Image.Image:
    base = source.convert("RGB").resize(size or source.size)
    if "2x2 grid" in prompt:
        return _grid(base, prompt)
    return Image.blend(base, paint(prompt, *base.size), 0.5)


def _grid(base: Image.Image, prompt: str) -> Image.Image:
    """Four varied panels of the (tiled) input, separated by white gutters."""
    w, h = base.size
    gutter, margin = 24, 12
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    panel_w, panel_h = (w - 2 * margin - gutter) // 2, (h - 2 * margin - gutter) // 2
    for index in range(4):
        col, row = index % 2, index // 2
        cell = base.crop((col * w // 2, row * h // 2, (col + 1) * w // 2, (row + 1) * h // 2))
        cell = Image.blend(cell.resize((panel_w, panel_h)),
                           paint(prompt, panel_w, panel_h, seed=index + 1), 0.5)
        if index % 2:
            cell = ImageOps.mirror(cell)
        canvas.paste(cell, (margin + col * (panel_w + gutter), margin + row * (panel_h + gutter)))
    return canvas


def encode(image: Image.Image, fmt: str = "png") -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, "PNG", compress_level=1)
    else:
        (image.convert("RGB") if fmt == "jpeg" else image).save(buffer, _PIL_FORMAT[fmt])
    return buffer.getvalue()


def png(width: int = 320, height: int = 240, prompt: str = "a source image") -> bytes:
    return encode(paint(prompt, width, height))


def noise_png(width: int, height: int) -> bytes:
    """A PNG that does not compress: its size is about width x height x 3 bytes."""
    return encode(Image.frombytes("RGB", (width, height), secrets.token_bytes(width * height * 3)))
