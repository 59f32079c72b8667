"""Read a model's JSON answer the way small models and loose servers write it.

Before validation the text is tidied of the usual slips: a byte-order mark, code fences, prose
before or after the object, raw control characters inside strings (llama.cpp's JSON grammar
lets newlines through), trailing commas, and Python's True/False/None. An answer wrapped in one
extra object (`{"CharacterBackstory": {...}}`, `{"properties": {...}}`) is unwrapped when the
inner object is the one that fits. Nothing is guessed beyond that: what still does not match
the schema goes to the one repair call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|\Z)", re.S)
_PY_LITERALS = {"True": "true", "False": "false", "None": "null"}
_TRAILING_COMMA = re.compile(r",\s*[}\]]")
_WORD = re.compile(r"[A-Za-z]+")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


@dataclass(frozen=True, slots=True)
class Answer(Generic[ModelT]):
    content: ModelT
    slips: tuple[str, ...]  # what was tidied before it validated (empty: valid as written)


def _unfenced(text: str, slips: list[str]) -> str:
    if "```" not in text:
        return text
    found = _FENCE.search(text)
    if found is None:
        return text
    slips.append("code_fence")
    return found.group(1)


def _object_span(text: str) -> tuple[int, int] | None:
    """Start and end of the first top-level JSON object (to the end when it never closes)."""
    start = text.find("{")
    if start < 0:
        return None
    depth, in_string, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return start, index + 1
    return start, len(text)


def _retokenized(text: str, slips: list[str]) -> str:
    """Escape control characters inside strings; drop trailing commas and map Python literals
    outside them."""
    out: list[str] = []
    in_string, escaped = False, False
    index, length = 0, len(text)
    while index < length:
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            elif char < " ":
                out.append(_ESCAPES.get(char, f"\\u{ord(char):04x}"))
                slips.append("control_chars")
                index += 1
                continue
            out.append(char)
            index += 1
            continue
        if char == '"':
            in_string = True
        elif char == "," and _TRAILING_COMMA.match(text, index):
            slips.append("trailing_comma")
            index += 1
            continue
        elif char.isascii() and char.isalpha():
            word = _WORD.match(text, index)
            assert word is not None
            token = word.group(0)
            if token in _PY_LITERALS:
                slips.append("python_literal")
            out.append(_PY_LITERALS.get(token, token))
            index += len(token)
            continue
        out.append(char)
        index += 1
    return "".join(out)


def tidy(text: str) -> tuple[str, tuple[str, ...]]:
    """The answer's JSON object as strict JSON text, and the slips tidied on the way."""
    slips: list[str] = []
    body = text.strip().lstrip("\ufeff")
    body = _unfenced(body, slips).strip()
    span = _object_span(body)
    if span is not None:
        start, end = span
        if body[:start].strip() or body[end:].strip():
            slips.append("prose")
        body = body[start:end]
    body = _retokenized(body, slips)
    return body, tuple(dict.fromkeys(slips))


def read_answer(text: str, model: type[ModelT]) -> Answer[ModelT]:
    """The answer validated against `model`, tidied first when it does not validate as written.

    Raises pydantic's ValidationError (of the tidied text) when nothing fits."""
    try:
        return Answer(model.model_validate_json(text), ())
    except ValidationError:
        pass
    body, slips = tidy(text)
    try:
        return Answer(model.model_validate_json(body), slips)
    except ValidationError as error:
        inner = _unwrapped(body, model)
        if inner is None:
            raise error from None
        return Answer(inner, (*slips, "wrapped"))


def _unwrapped(body: str, model: type[ModelT]) -> ModelT | None:
    try:
        outer: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(outer, dict):
        return None
    for value in outer.values():
        if isinstance(value, dict):
            try:
                return model.model_validate(value)
            except ValidationError:
                continue
    return None
