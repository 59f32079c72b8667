"""Visual themes derived from the text presets, and prompts that stay consistent across kinds."""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any

import pytest

from llm_consumer.errors import InvalidRequest
from llm_consumer.events.requests import ImageRequested, VisualTheme
from llm_consumer.images.prompting import MAX_PROMPT_CHARS, build_image_prompt, describe_context
from llm_consumer.images.visual_themes import parse_colour, resolve_visual_theme, visual_presets


def text_presets() -> dict[str, Any]:
    text = resources.files("llm_consumer.prompts").joinpath("themes.toml").read_text("utf-8")
    return tomllib.loads(text)


def request(**data: Any) -> ImageRequested:
    return ImageRequested.model_validate(data)


def test_every_text_preset_has_a_visual_side() -> None:
    presets = visual_presets()
    assert set(presets) == set(text_presets())
    for name, look in presets.items():
        assert look.genre == text_presets()[name]["genre"], "genre and tone come from the text"
        assert len(look.palette) == 5 and look.art_style and look.negative and look.lighting


def test_one_theme_reads_the_same_across_kinds() -> None:
    look = resolve_visual_theme(VisualTheme(preset="gothic-horror"))
    prompts = [build_image_prompt(request(kind=kind, prompt="the Widow of Ashfall"), look)
               for kind in ("portrait", "location", "item")]
    theme_sentence = look.describe()
    assert all(p.text.endswith(theme_sentence) for p in prompts)
    assert all(p.negative is not None and p.negative.endswith(look.negative or "")
               for p in prompts)
    assert len({p.text.split(":")[0] for p in prompts}) == 3, "each kind keeps its framing"
    assert "#0f0f1a" in theme_sentence and "moonlit crypt" in theme_sentence


def test_request_overrides_merge_over_the_preset() -> None:
    look = resolve_visual_theme(VisualTheme.model_validate({
        "preset": "dark-fantasy", "art_style": "oil painting",
        "color_scheme": ["ash grey", "ember red", "#123456", "moonbeam"],
        "lighting": "torchlight", "negative_prompt": "modern clothes"}))
    assert look.art_style == "oil painting" and look.tone == "ominous, morally grey, haunted"
    assert look.palette_hex == ["#808080", "#ff0000", "#123456"], "'moonbeam' names no colour"
    assert look.color_scheme == "ash grey, ember red, #123456, moonbeam"
    assert look.lighting == "torchlight" and look.negative == "modern clothes"


def test_color_scheme_may_name_another_preset() -> None:
    look = resolve_visual_theme(VisualTheme(preset="grimdark", color_scheme="fairy-tale"))
    assert look.palette == visual_presets()["fairy-tale"].palette
    assert look.art_style == visual_presets()["grimdark"].art_style


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="unknown theme preset 'cyberpunk'"):
        resolve_visual_theme(VisualTheme(preset="cyberpunk"))


@pytest.mark.parametrize(("value", "rgb"), [
    ("#ABCDEF", (171, 205, 239)), ("teal", (0, 128, 128)), ("burnt orange", (255, 165, 0)),
    ("no such colour", None), ("", None)])
def test_parse_colour(value: str, rgb: tuple[int, int, int] | None) -> None:
    assert parse_colour(value) == rgb


def test_context_becomes_the_subject() -> None:
    text = describe_context({"name": "Mira", "race": "Half-Elf", "class": "Rogue", "level": 3,
                             "traits": ["sly", "loyal"], "sheet": {"str": 10}, "dead": False},
                            ("gender", "race", "class"))
    assert text == "Mira, a Half-Elf Rogue; level: 3; traits: sly, loyal"


def test_prompt_is_bounded_and_keeps_the_theme() -> None:
    look = resolve_visual_theme(VisualTheme(preset="steampunk"))
    prompt = build_image_prompt(request(kind="item", prompt="gear " * 800), look)
    assert len(prompt.text) <= MAX_PROMPT_CHARS and prompt.text.endswith(look.describe())
    assert "…" in prompt.text


def test_transform_needs_a_target_style() -> None:
    data = request(kind="transform", source_image={"ref": "images/a/0.png"})
    with pytest.raises(InvalidRequest, match="needs a theme or a prompt"):
        build_image_prompt(data, resolve_visual_theme(None))
    styled = build_image_prompt(data, resolve_visual_theme(VisualTheme(art_style="ukiyo-e")))
    assert styled.text.startswith("Restyle the source image.") and "ukiyo-e" in styled.text
