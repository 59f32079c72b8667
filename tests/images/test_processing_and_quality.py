"""Decoding bounds, grid splitting and trimming, the blank check and the palette distance."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from llm_consumer.images.processing import (
    OutputFormat,
    UnreadableImage,
    as_format,
    decode,
    encode,
    sniff_format,
    split_grid,
    tile,
)
from llm_consumer.images.quality import BlankImage, assess, hex_colour, to_lab
from llm_consumer.images.visual_themes import visual_presets
from tests.fakes.pictures import paint, tint


def save(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decode_accepts_the_three_formats(fmt: str) -> None:
    decoded = decode(save(paint("x", 200, 100), fmt))
    assert decoded.format == fmt.lower() and (decoded.width, decoded.height) == (200, 100)
    assert sniff_format(decoded.data) == decoded.format


@pytest.mark.parametrize(("data", "reason"), [
    (b"plain text, not an image", "not a readable image"),
    (save(paint("x", 100, 100), "GIF"), "unsupported image format GIF"),
    (save(paint("x", 200, 40), "PNG"), "smaller than 64 px"),
    (save(Image.new("1", (8200, 64)), "PNG"), "over the 8192 px"),
    (save(Image.new("1", (5000, 4000)), "PNG"), "16.8 Mpx"),
    (save(paint("x", 100, 100), "PNG")[:200], "not a readable image"),
], ids=["text", "gif", "tiny", "too-wide", "too-many-pixels", "truncated"])
def test_decode_refuses(data: bytes, reason: str) -> None:
    with pytest.raises(UnreadableImage, match=reason):
        decode(data)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = save(Image.new("1", (20_000, 20_000)), "PNG")  # ~50 KB of file, 400 Mpx of pixels
    assert len(bomb) < 100_000
    with pytest.raises(UnreadableImage):
        decode(bomb)


def test_as_format_keeps_bytes_or_converts() -> None:
    decoded = decode(save(paint("x", 100, 100), "PNG"))
    assert as_format(decoded, "png") is decoded.data
    assert Image.open(io.BytesIO(as_format(decoded, "jpeg"))).format == "JPEG"


def test_grid_split_trims_gutters_and_margins() -> None:
    source = paint("#aa3300 #113355 a source", 256, 256)
    grid = tint(tile(source, 2, 2, (256, 256)), "a 2x2 grid #222222 #888888")
    panels = split_grid(grid, 2, 2)
    assert len(panels) == 4
    for panel in panels:
        assert panel.size == (232, 232), "(512 - 2x12 margin - 24 gutter) / 2: the exact panel"
        rgb = panel.convert("RGB")
        assert (255, 255, 255) not in [rgb.getpixel((0, 0)), rgb.getpixel((231, 231))]


def test_panel_without_gutter_is_left_alone() -> None:
    picture = paint("#aa3300 #113355 #ffffff", 300, 200)
    assert split_grid(picture, 1, 1)[0].size == (300, 200)


def test_uniform_images_are_blank() -> None:
    for colour in ((0, 0, 0), (255, 255, 255), (120, 30, 200)):
        with pytest.raises(BlankImage, match="uniform"):
            assess(Image.new("RGB", (512, 512), colour), ())


def test_lab_reference_values() -> None:
    assert to_lab((255, 255, 255)) == pytest.approx((100.0, 0.0, 0.0), abs=0.05)
    assert to_lab((255, 0, 0)) == pytest.approx((53.24, 80.09, 67.20), abs=0.05)
    assert to_lab((0, 0, 0)) == pytest.approx((0.0, 0.0, 0.0), abs=0.01)


def test_palette_distance_tells_on_theme_from_off_theme() -> None:
    dark, bright = visual_presets()["dark-fantasy"], visual_presets()["high-fantasy"]
    picture = paint(" ".join(dark.palette_hex), 512, 512)
    on_theme = assess(picture, dark.palette)
    off_theme = assess(picture, bright.palette)
    assert on_theme.palette_distance is not None and off_theme.palette_distance is not None
    assert on_theme.palette_distance < 10 < 25 < off_theme.palette_distance
    assert assess(picture, ()).palette_distance is None
    assert len(on_theme.dominant) <= 5 and sum(s for s, _ in on_theme.dominant) == pytest.approx(1)
    assert hex_colour(on_theme.dominant[0][1]).startswith("#")


def test_encode_round_trips() -> None:
    picture = paint("x", 120, 90)
    formats: tuple[OutputFormat, ...] = ("png", "jpeg", "webp")
    for fmt in formats:
        assert decode(encode(picture, fmt)).format == fmt
