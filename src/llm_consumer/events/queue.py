"""Queue status and re-prioritizing: the control events and the answers to them.

A broker reports neither a queue's depth per priority nor a message's position, and cannot
reorder a queue; the service keeps an index of queued requests (bus/queue_index.py) and
answers from it. See docs/operations.md ("Queue status and re-prioritizing").
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_PRIORITY = 9  # as bus/topology.py declares the work queue (x-max-priority)


class _Inbound(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Outbound(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueueStatus(_Inbound):
    """`queue.status`: what waits, runs and is deferred; with `request_id`, where that request
    is. A normal token sees its own requests; `llm:admin` sees every caller's."""

    request_id: str | None = Field(None, min_length=1, max_length=200, description=(
        "a request of the sender's (token `sub`, and `source`: default this event's) to locate"))
    source: str | None = Field(None, min_length=1, max_length=500,
                               description="the request's `source`; default: this event's")
    subject: str | None = Field(None, min_length=1, max_length=200,
                                description="the requester's token `sub` (llm:admin only)")


class JobPrioritize(_Inbound):
    """`job.prioritize`: move a queued request to another priority (0-9, 9 first).

    The request is named as in `job.cancel`: the sender's own by default, another caller's
    (`subject`) only with `llm:admin`. It runs once, and its caller gets one result."""

    request_id: str = Field(min_length=1, max_length=200)
    priority: int = Field(ge=0, le=MAX_PRIORITY)
    source: str | None = Field(None, min_length=1, max_length=500,
                               description="the request's `source`; default: this event's")
    subject: str | None = Field(None, min_length=1, max_length=200,
                                description="the requester's token `sub` (llm:admin only)")


class BandDepth(_Outbound):
    priority: int = Field(ge=0, le=MAX_PRIORITY)
    queued: int = Field(ge=0)


class BrokerDepths(_Outbound):
    """What the broker itself counts (every caller's messages)."""

    work_queue: int = Field(ge=0, description="messages ready in the work queue")
    deferred: int = Field(ge=0, description="retry and rate-limit copies in the delay queues")
    deferred_by_delay_s: dict[str, int] = Field(
        description="non-empty delay queues: their wait (s) -> messages")
    oldest_deferred_max_s: int | None = Field(None, ge=0, description=(
        "the longest wait of a non-empty delay queue: no deferred copy waits longer than this "
        "from now (the broker does not tell a message's age)"))
    dead_letters: int = Field(ge=0)


RequestState = Literal["queued", "running", "deferred", "completed", "failed", "cancelled",
                       "unknown"]


class RequestPosition(_Outbound):
    request_id: str
    state: RequestState
    priority: int | None = Field(None, ge=0, le=MAX_PRIORITY)
    attempt: int | None = Field(None, ge=0)
    position: int | None = Field(None, ge=0, description=(
        "queued: requests the broker delivers before it (every caller's): all in higher "
        "priorities plus the earlier ones in its own; an estimate (prefetched and deferred "
        "copies are not counted)"))
    ahead_in_higher: int | None = Field(None, ge=0)
    ahead_in_band: int | None = Field(None, ge=0)
    queued_s: float | None = Field(None, ge=0, description="seconds since it was queued")


class QueueStatusReported(_Outbound):
    """The answer to `queue.status`, sent to its reply_to (and the hub)."""

    scope: Literal["own", "all"] = Field(description="own: the sender's requests; all: admin")
    queued: int = Field(ge=0, description="queued requests in scope (index)")
    bands: list[BandDepth] = Field(description="queued requests in scope per priority, "
                                               "highest first; empty bands left out")
    in_flight: int = Field(ge=0, description="requests running on every live instance")
    in_flight_by_instance: dict[str, int] = Field(
        default_factory=dict, description="llm:admin only: per live instance")
    broker: BrokerDepths
    request: RequestPosition | None = None
    index: Literal["ok", "degraded"] = Field(
        description="degraded: Redis did not answer; the counts from it are 0")


PrioritizeOutcome = Literal["accepted", "not_found", "running", "completed", "too_large",
                            "unchanged"]


class JobPrioritized(_Outbound):
    """The answer to `job.prioritize`."""

    request_id: str
    outcome: PrioritizeOutcome = Field(description=(
        "accepted: a copy waits at the new priority (the old copy is skipped when delivered); "
        "not_found: no queued request of the sender's by that id; running/completed: too late; "
        "too_large: its body is over QUEUE_INDEX_MAX_BODY_BYTES, so it cannot be re-sent; "
        "unchanged: it already has that priority"))
    priority: int = Field(ge=0, le=MAX_PRIORITY, description="the priority asked for")
    previous_priority: int | None = Field(None, ge=0, le=MAX_PRIORITY)
    position: int | None = Field(None, ge=0, description="accepted: its position estimate now")
