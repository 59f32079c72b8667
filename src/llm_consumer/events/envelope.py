"""CloudEvents 1.0 envelope in structured JSON mode, as the contract describes it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from llm_consumer.tracing import outgoing

CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"
MAX_ID_LENGTH = 200


class Envelope(BaseModel):
    """One event on the hub. Unknown attributes (CloudEvents extensions) are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    source: str = Field(min_length=1, max_length=500)
    type: str = Field(min_length=1, max_length=200)
    time: datetime | None = None
    datacontenttype: str | None = "application/json"
    subject: str | None = Field(None, max_length=500)
    correlationid: str | None = Field(None, max_length=MAX_ID_LENGTH)
    causationid: str | None = Field(None, max_length=MAX_ID_LENGTH)
    data: dict[str, Any]

    @property
    def correlation(self) -> str:
        """The correlation id, defaulting to the event's own id."""
        return self.correlationid or self.id


def new_event(
    event_type: str,
    data: BaseModel,
    *,
    source: str,
    cause: Envelope | None = None,
) -> Envelope:
    """A fresh envelope for an event the service publishes, linked to the request that caused it
    and carrying the current trace context (CloudEvents distributed-tracing extension)."""
    return Envelope(
        **outgoing(),
        specversion="1.0",
        id=str(uuid.uuid4()),
        source=source,
        type=event_type,
        time=datetime.now(UTC),
        datacontenttype="application/json",
        subject=cause.subject if cause else None,
        correlationid=cause.correlation if cause else None,
        causationid=cause.id if cause else None,
        data=data.model_dump(mode="json", exclude_none=True),
    )


def encode(envelope: Envelope) -> bytes:
    return orjson.dumps(envelope.model_dump(mode="json", exclude_none=True))
