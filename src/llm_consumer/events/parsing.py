"""Raw bytes from the broker to a validated envelope and data model, or a clear InvalidRequest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from llm_consumer.errors import InvalidRequest
from llm_consumer.events.catalog import CONSUMED_TYPES, EVENTS, EventSpec
from llm_consumer.events.envelope import Envelope

MAX_REPORTED_ERRORS = 3


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


def _load(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"body is not valid JSON: {error}") from None


def parse(body: bytes, routing_key: str, *, max_bytes: int) -> Parsed:
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
