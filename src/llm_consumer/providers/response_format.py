"""The structured-output part of a chat request, in each mode a server may support.

- `json_schema`: OpenAI's `response_format`; `strict` (OpenAI's structured outputs) needs every
  property required, no extra properties and no length bounds, so a strict copy of the schema
  is sent (bounds become descriptions; the service still validates against the real schema).
- `json_object_schema`: `{"type": "json_object", "schema": ...}` (llama-cpp-python, Anyscale,
  Together). llama.cpp builds a grammar from it and crashes on very long string bounds, so it
  gets the grammar-safe copy the embedded model uses.
- `json_object`, `text`: the schema travels in the system message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from llm_consumer.providers.capabilities import Capabilities, StructuredMode
from llm_consumer.providers.local import inline_schema

MEMO_SIZE = 256
# Derived copies per (what, schema object): the handlers pass the same cached schema object for
# each kind, so a call costs a lookup, not a walk of the schema.
_memo: dict[tuple[str, int], tuple[dict[str, Any], Any]] = {}


def _derived(what: str, schema: dict[str, Any], build: Callable[[dict[str, Any]], Any]) -> Any:
    key = (what, id(schema))
    hit = _memo.get(key)
    if hit is not None and hit[0] is schema:
        return hit[1]
    value = build(schema)
    if len(_memo) < MEMO_SIZE:
        _memo[key] = (schema, value)  # holding the schema keeps its id from being reused
    return value


_NOT_IN_STRICT = frozenset({"minLength", "maxLength", "default", "examples"})
_NAMED_CHILDREN = ("properties", "$defs")  # keys of these are names, not keywords


def _nullable(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    kind = node.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(_nullable(branch) for branch in node.get("anyOf", ()))


def _bounds_note(node: dict[str, Any]) -> str | None:
    low, high = node.get("minLength"), node.get("maxLength")
    if high is not None:
        return f"at most {high} characters"
    if low is not None and low > 1:
        return f"at least {low} characters"
    return None


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` that OpenAI's strict mode accepts.

    Every object lists all its properties as required (an optional one becomes nullable) and
    forbids others; string length bounds move into the description."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _NAMED_CHILDREN and isinstance(value, dict):
                out[key] = {name: walk(sub) for name, sub in value.items()}
            elif key not in _NOT_IN_STRICT:
                out[key] = walk(value)
        note = _bounds_note(node)
        if note is not None:
            out["description"] = f"{out['description']} ({note})" if "description" in out \
                else note
        if isinstance(out.get("properties"), dict):
            required = set(node.get("required", ()))
            for name, sub in out["properties"].items():
                if name not in required and not _nullable(sub):
                    out["properties"][name] = {"anyOf": [sub, {"type": "null"}]}
            out["required"] = list(out["properties"])
            out["additionalProperties"] = False
        return out

    result: dict[str, Any] = walk(schema)
    return result


def _grammar_safe(schema: dict[str, Any]) -> dict[str, Any]:
    try:
        return inline_schema(schema)
    except ValueError:  # recursive references: the server converts what it can
        return schema


def response_format(caps: Capabilities, name: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The `response_format` field for `caps`, or None when it is left out (text mode)."""
    if caps.structured == "json_schema":
        sent = _derived("strict", schema, strict_schema) if caps.strict else schema
        return {"type": "json_schema",
                "json_schema": {"name": name, "schema": sent, "strict": caps.strict}}
    if caps.structured == "json_object_schema":
        return {"type": "json_object", "schema": _derived("grammar", schema, _grammar_safe)}
    if caps.structured == "json_object":
        return {"type": "json_object"}
    return None


def _without_titles(node: Any) -> Any:
    """`node` without `title` annotations (a property named "title" stays)."""
    if isinstance(node, list):
        return [_without_titles(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _NAMED_CHILDREN and isinstance(value, dict):
            out[key] = {name: _without_titles(sub) for name, sub in value.items()}
        elif key != "title":
            out[key] = _without_titles(value)
    return out


def schema_instruction(mode: StructuredMode, schema: dict[str, Any]) -> str:
    """Text added to the system message so the model knows the shape the server cannot force."""
    if mode == "json_schema":
        return ""
    if mode == "json_object_schema":
        return "\n\nAnswer with one JSON object and nothing else."
    compact: str = _derived("prompt", schema,
                            lambda node: orjson.dumps(_without_titles(node)).decode())
    return ("\n\nAnswer with one JSON object and nothing else: no prose, no code fences. "
            f"It must match this JSON schema:\n{compact}")
