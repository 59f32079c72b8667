"""Image prompts: the subject (a request's prompt or context), the kind's framing, the theme.

The order is fixed (subject, framing, theme) so that portraits, locations and items of one theme
read alike to the model; the negative prompt joins the kind's and the theme's exclusions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_consumer.errors import InvalidRequest
from llm_consumer.events.requests import ImageKind, ImageRequested
from llm_consumer.images.visual_themes import VisualLook

MAX_PROMPT_CHARS = 1800  # GetImg's v1 models take 2048; leave room for what a provider appends
GRID_ROWS = GRID_COLS = 2


@dataclass(frozen=True, slots=True)
class Frame:
    lead: str
    framing: str
    negative: str
    descriptors: tuple[str, ...] = ()  # context keys that read as "a <...>" after the name


FRAMES: dict[ImageKind, Frame] = {
    ImageKind.PORTRAIT: Frame(
        "Character portrait of", "Head-and-shoulders portrait facing the viewer, expressive "
        "detailed face, uncluttered atmospheric background.",
        "deformed face, extra fingers, extra limbs, text, watermark, signature, frame",
        ("gender", "age", "race", "class", "character_class")),
    ImageKind.LOCATION: Frame(
        "Location concept art of", "Wide establishing shot with depth and a sense of scale.",
        "text, watermark, signature, frame, close-up people",
        ("climate", "terrain", "type")),
    ImageKind.ITEM: Frame(
        "Item illustration of", "A single object centred on a plain background, fully "
        "visible, detailed materials.",
        "hands, people, cluttered background, several objects, text, watermark",
        ("rarity", "material", "type", "item_type")),
    ImageKind.TRANSFORM: Frame(
        "Restyle the source image", "Keep the composition, subjects and poses of the source "
        "image; change its style, colours and lighting to match the theme.",
        "text, watermark, signature, changed composition"),
    ImageKind.VARIATIONS: Frame(
        f"A {GRID_ROWS}x{GRID_COLS} grid of {GRID_ROWS * GRID_COLS} variations of the source "
        "image", "Equal panels separated by thin white gutters; keep the subject and the style, "
        "vary the pose, angle and small details.",
        "text, watermark, merged panels, borders inside panels"),
}


@dataclass(frozen=True, slots=True)
class ImagePrompt:
    text: str
    negative: str | None


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int | float):
        return str(value).strip() or None
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(str(v) for v in value) or None
    return None


def describe_context(context: dict[str, Any], descriptors: tuple[str, ...]) -> str:
    """`Mira, a Half-Elf Rogue; level: 3; appearance: ...` from a context object."""
    used = {"name", *descriptors}
    words = [w for w in (_scalar(context.get(key)) for key in descriptors) if w]
    head = ", ".join(p for p in (_scalar(context.get("name")), f"a {' '.join(words)}"
                                 if words else None) if p)
    details = [f"{key.replace('_', ' ')}: {text}" for key, value in context.items()
               if key not in used and (text := _scalar(value))]
    return "; ".join(p for p in (head, *details) if p)


def build_image_prompt(data: ImageRequested, look: VisualLook) -> ImagePrompt:
    """The prompt of a generating kind (portrait, location, item, transform, variations)."""
    frame = FRAMES[data.kind]
    subject = "; ".join(p for p in (
        data.prompt, describe_context(data.context or {}, frame.descriptors)) if p)
    if data.kind == ImageKind.TRANSFORM and not subject and look == VisualLook():
        raise InvalidRequest("kind transform needs a theme or a prompt naming the target style")
    theme = look.describe()
    budget = MAX_PROMPT_CHARS - len(frame.lead) - len(frame.framing) - len(theme) - 4
    if len(subject) > budget:
        subject = subject[: max(0, budget - 1)].rstrip() + "…"
    head = f"{frame.lead}: {subject}." if subject else f"{frame.lead}."
    text = " ".join(p for p in (head, frame.framing, theme) if p)
    negative = ", ".join(p for p in (frame.negative, look.negative) if p)
    return ImagePrompt(text=text, negative=negative or None)
