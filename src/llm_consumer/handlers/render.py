"""A readable plain-text rendering of any structured content."""

from __future__ import annotations

from typing import Any


def _label(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _item(value: Any) -> str:
    if isinstance(value, dict):
        return " — ".join(str(v) for v in value.values() if v not in (None, "", []))
    return str(value)


def render_text(content: dict[str, Any]) -> str:
    """Render fields in order: scalars as `Label: value`, lists as bullet lists."""
    blocks: list[str] = []
    for key, value in content.items():
        if value in (None, "", []):
            continue
        if isinstance(value, list):
            bullets = "\n".join(f"- {_item(v)}" for v in value)
            blocks.append(f"{_label(key)}:\n{bullets}")
        elif isinstance(value, dict):
            blocks.append(f"{_label(key)}:\n" + "\n".join(
                f"- {_label(k)}: {_item(v)}" for k, v in value.items()))
        else:
            blocks.append(f"{_label(key)}: {value}")
    return "\n\n".join(blocks)
