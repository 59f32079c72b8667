"""Visual themes: the art style, colour scheme and negative prompt of a request's theme.

A preset joins its text side (genre and tone, `prompts/themes.toml`) with its visual side
(`prompts/visual_themes.toml`), so every image of one theme is described the same way.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from llm_consumer.errors import InvalidRequest
from llm_consumer.events.requests import VisualTheme
from llm_consumer.images.quality import RGB, hex_colour
from llm_consumer.lazy import lazy_module

if TYPE_CHECKING:
    from PIL import ImageColor
else:  # loaded by the first image a worker handles
    ImageColor = lazy_module("PIL.ImageColor")

MAX_FIELD_CHARS = 300
MAX_COLOURS = 12


@dataclass(frozen=True, slots=True)
class VisualLook:
    preset: str | None = None
    genre: str | None = None
    tone: str | None = None
    art_style: str | None = None
    color_scheme: str | None = None
    palette: tuple[RGB, ...] = ()
    lighting: str | None = None
    negative: str | None = None

    @property
    def palette_hex(self) -> list[str]:
        return [hex_colour(colour) for colour in self.palette]

    def describe(self) -> str:
        """The theme as prompt sentences, always in the same order."""
        parts = []
        if self.art_style:
            parts.append(f"Art style: {self.art_style}.")
        if self.genre or self.tone:
            parts.append(f"Genre: {self.genre or 'fantasy'}; mood: {self.tone or 'evocative'}.")
        if self.color_scheme or self.palette:
            colours = ", ".join(self.palette_hex)
            scheme = self.color_scheme or "theme palette"
            parts.append(f"Colour palette: {scheme}" + (f" ({colours})." if colours else "."))
        if self.lighting:
            parts.append(f"Lighting: {self.lighting}.")
        return " ".join(parts)


def _load(name: str) -> dict[str, Any]:
    text = resources.files("llm_consumer.prompts").joinpath(name).read_text("utf-8")
    return tomllib.loads(text)


@cache
def visual_presets() -> dict[str, VisualLook]:
    text, visual = _load("themes.toml"), _load("visual_themes.toml")
    return {
        name: VisualLook(
            preset=name,
            genre=text.get(name, {}).get("genre"),
            tone=text.get(name, {}).get("tone"),
            art_style=table["art_style"],
            color_scheme=table["color_scheme"],
            palette=tuple(parse_colour(value) or (0, 0, 0) for value in table["palette"]),
            lighting=table.get("lighting"),
            negative=table.get("negative"),
        )
        for name, table in visual.items()
    }


def parse_colour(value: str) -> RGB | None:
    """A hex code or CSS colour name; for "ash grey" or "ember red", the colour of its last word."""
    for candidate in (value.strip(), value.strip().split(" ")[-1] if value.strip() else ""):
        try:
            parsed = ImageColor.getrgb(candidate.lower())
        except ValueError:
            continue
        return parsed[0], parsed[1], parsed[2]
    return None


def _scheme(value: str | list[str]) -> tuple[str, tuple[RGB, ...]]:
    """Words for the prompt and the colours they name, from a request's `color_scheme`."""
    if isinstance(value, str) and value in visual_presets():
        look = visual_presets()[value]
        return look.color_scheme or value, look.palette
    entries = value if isinstance(value, list) else value.split(",")
    entries = [entry.strip()[:50] for entry in entries if entry.strip()][:MAX_COLOURS]
    colours = tuple(c for c in (parse_colour(entry) for entry in entries) if c is not None)
    return ", ".join(entries), colours


def _text_field(theme: VisualTheme, name: str) -> str | None:
    value = getattr(theme, name, None) or (theme.model_extra or {}).get(name)
    return value[:MAX_FIELD_CHARS] if isinstance(value, str) and value.strip() else None


def resolve_visual_theme(theme: VisualTheme | None) -> VisualLook:
    """Merge a request's visual theme over its named preset (no theme: a neutral look)."""
    if theme is None:
        return VisualLook()
    look = VisualLook()
    if theme.preset:
        presets = visual_presets()
        if theme.preset not in presets:
            raise InvalidRequest(f"unknown theme preset {theme.preset!r}; known: "
                                 f"{', '.join(sorted(presets))}")
        look = presets[theme.preset]
    scheme, palette = look.color_scheme, look.palette
    if theme.color_scheme:
        scheme, palette = _scheme(theme.color_scheme)
    return VisualLook(
        preset=theme.preset,
        genre=look.genre,
        tone=look.tone,
        art_style=_text_field(theme, "art_style") or look.art_style,
        color_scheme=scheme,
        palette=palette,
        lighting=_text_field(theme, "lighting") or look.lighting,
        negative=_text_field(theme, "negative_prompt") or look.negative,
    )
