"""Raw bytes from the broker to a validated envelope and data model, or a clear InvalidRequest.

Whatever the body, `parse` returns or raises InvalidRequest with one line of at most
MAX_ERROR_CHARS characters; `peek` never raises. A body nested deeper than MAX_JSON_DEPTH
levels is refused here, so nothing downstream (orjson's encoder stops at 255 levels, the cache
digest, the prompt fitting) ever walks a deeper tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from llm_consumer.errors import InvalidRequest
from llm_consumer.events.catalog import CONSUMED_TYPES, EVENTS, EventSpec
from llm_consumer.events.envelope import Envelope
from llm_consumer.events.requests import MAX_JSON_DEPTH

MAX_REPORTED_ERRORS = 3
MAX_ERROR_CHARS = 500
_CONTAINERS = frozenset({dict, list})  # what orjson.loads builds


@dataclass(frozen=True, slots=True)
class Parsed:
    envelope: Envelope
    spec: EventSpec
    data: BaseModel


@dataclass(frozen=True, slots=True)
class Peek:
    """What can be read from a body that failed validation, to address a generation.failed."""

    request_id: str | None = None
    request_type: str | None = None
    kind: str | None = None


def describe(error: ValidationError, prefix: str = "") -> str:
    parts = []
    for item in error.errors()[:MAX_REPORTED_ERRORS]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{prefix}{where}: {item['msg']}")
    more = error.error_count() - MAX_REPORTED_ERRORS
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` on one line (control characters as spaces), cut to `limit` characters."""
    flat = "".join(" " if ch < " " or ch == "\x7f" else ch for ch in text)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects nest more than `limit` levels (iterative: no recursion;
    empty containers are never stacked, so a body of many `[]` costs one pass)."""
    if type(value) not in _CONTAINERS:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if type(node) is dict else node:
            if type(child) in _CONTAINERS:
                if depth >= limit:
                    return True
                if child:
                    stack.append((child, depth + 1))
    return False


def _load(body: bytes) -> Any:
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        if "depth limit" in str(error):  # orjson's own limit (1024 levels)
            raise InvalidRequest(
                f"body nests JSON deeper than the {MAX_JSON_DEPTH}-level limit") from None
        raise InvalidRequest(f"body is not valid JSON: {error}") from None
    # Fewer brackets than the limit cannot nest deeper: most bodies skip the walk.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and too_deep(raw):
        raise InvalidRequest(f"body nests JSON deeper than the {MAX_JSON_DEPTH}-level limit")
    return raw


def parse(body: bytes, routing_key: str, *, max_bytes: int) -> Parsed:
    """The validated request in `body`, or InvalidRequest with one short line saying why."""
    try:
        return _parse(body, routing_key, max_bytes=max_bytes)
    except InvalidRequest as error:
        raise InvalidRequest(one_line(error.message)) from None


def _parse(body: bytes, routing_key: str, *, max_bytes: int) -> Parsed:
    if len(body) > max_bytes:
        raise InvalidRequest(f"message of {len(body)} bytes is over the {max_bytes}-byte limit")
    raw = _load(body)
    if not isinstance(raw, dict):
        raise InvalidRequest("body must be a JSON object (a CloudEvents envelope)")
    try:
        envelope = Envelope.model_validate(raw)
    except ValidationError as error:
        raise InvalidRequest(f"invalid envelope: {describe(error)}") from None
    if envelope.type not in CONSUMED_TYPES:
        raise InvalidRequest(f"unknown event type {envelope.type!r}")
    if routing_key and routing_key != envelope.type:
        raise InvalidRequest(
            f"envelope type {envelope.type!r} does not match routing key {routing_key!r}"
        )
    spec = EVENTS[envelope.type]
    try:
        data = spec.model.model_validate(envelope.data)
    except ValidationError as error:
        raise InvalidRequest(f"invalid data: {describe(error, 'data.')}") from None
    return Parsed(envelope=envelope, spec=spec, data=data)


def peek(body: bytes, max_bytes: int) -> Peek:
    """Best effort: the id, type and kind of a body, without trusting anything else in it."""
    if len(body) > max_bytes:
        return Peek()
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Peek()
    if not isinstance(raw, dict):
        return Peek()
    data = raw.get("data")
    kind = data.get("kind") if isinstance(data, dict) else None
    return Peek(
        request_id=_short_str(raw.get("id")),
        request_type=_short_str(raw.get("type")),
        kind=_short_str(kind),
    )


def _short_str(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= 200 else None
