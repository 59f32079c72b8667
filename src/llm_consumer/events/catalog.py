"""Every event type of the contract, its data model and its direction, in one table."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from llm_consumer.events import queue as qu
from llm_consumer.events import requests as rq
from llm_consumer.events import results as rs

CONTENT_REQUESTED = "content.requested"
IMAGE_REQUESTED = "image.requested"
JOB_CANCEL = "job.cancel"
CACHE_INVALIDATE = "cache.invalidate"
CONTENT_GENERATED = "content.generated"
THEME_ANALYZED = "theme.analyzed"
VALIDATION_COMPLETED = "validation.completed"
IMAGE_GENERATED = "image.generated"
CONTENT_PROGRESS = "content.progress"
GENERATION_FAILED = "generation.failed"
JOB_STATUS = "job.status"
RATE_LIMIT_WARNING = "rate_limit.warning"
RATE_LIMIT_EXCEEDED = "rate_limit.exceeded"
SERVICE_HEARTBEAT = "service.heartbeat"
SLO_WARNING = "slo.warning"
QUEUE_STATUS = "queue.status"
QUEUE_STATUS_REPORTED = "queue.status.reported"
JOB_PRIORITIZE = "job.prioritize"
JOB_PRIORITIZED = "job.prioritized"

Direction = Literal["request", "control", "result", "notice"]


@dataclass(frozen=True, slots=True)
class EventSpec:
    type: str
    model: builtins.type[BaseModel]
    direction: Direction
    permission: str | tuple[str, ...] | None = None  # a tuple: any one of them
    summary: str = ""


EVENTS: dict[str, EventSpec] = {
    spec.type: spec
    for spec in (
        EventSpec(CONTENT_REQUESTED, rq.ContentRequested, "request", "llm:content",
                  "Generate text of one kind."),
        EventSpec(IMAGE_REQUESTED, rq.ImageRequested, "request", "llm:image",
                  "Generate, transform or enhance images."),
        EventSpec(JOB_CANCEL, rq.JobCancel, "control", ("llm:content", "llm:image", "llm:admin"),
                  "Skip a queued request or stop a running one: the caller's own, or any with "
                  "llm:admin."),
        EventSpec(CACHE_INVALIDATE, rq.CacheInvalidate, "control", "llm:admin",
                  "Drop cached results, all or of one kind."),
        EventSpec(CONTENT_GENERATED, rs.ContentGenerated, "result", None,
                  "Generated text, structured and rendered."),
        EventSpec(THEME_ANALYZED, rs.ThemeAnalyzed, "result", None,
                  "Result of a theme.analyze request."),
        EventSpec(VALIDATION_COMPLETED, rs.ValidationCompleted, "result", None,
                  "Result of a content.validate request."),
        EventSpec(IMAGE_GENERATED, rs.ImageGenerated, "result", None,
                  "Stored images of an image request."),
        EventSpec(GENERATION_FAILED, rs.GenerationFailed, "result", None,
                  "A request that ended without a result, and why."),
        EventSpec(CONTENT_PROGRESS, rs.ContentProgress, "notice", None,
                  "A streamed text delta."),
        EventSpec(JOB_STATUS, rs.JobStatus, "notice", None, "A request changed state."),
        EventSpec(RATE_LIMIT_WARNING, rs.RateLimitNotice, "notice", None,
                  "A rate-limit scope passed 80% of its limit."),
        EventSpec(RATE_LIMIT_EXCEEDED, rs.RateLimitNotice, "notice", None,
                  "A rate-limit scope is exhausted."),
        EventSpec(SERVICE_HEARTBEAT, rs.ServiceHeartbeat, "notice", None,
                  "Liveness and load of one instance."),
        EventSpec(SLO_WARNING, rs.SloWarning, "notice", None,
                  "A target class's share of requests within its latency target fell under "
                  "the warning level on one instance."),
        EventSpec(QUEUE_STATUS, qu.QueueStatus, "control",
                  ("llm:content", "llm:image", "llm:admin"),
                  "Queue depth by priority, in flight, deferred, dead letters, and where one "
                  "request is: the caller's own, or everything with llm:admin."),
        EventSpec(JOB_PRIORITIZE, qu.JobPrioritize, "control",
                  ("llm:content", "llm:image", "llm:admin"),
                  "Move a queued request to another priority: the caller's own, or any with "
                  "llm:admin; it still runs once."),
        EventSpec(QUEUE_STATUS_REPORTED, qu.QueueStatusReported, "notice", None,
                  "The answer to a queue.status."),
        EventSpec(JOB_PRIORITIZED, qu.JobPrioritized, "notice", None,
                  "The answer to a job.prioritize."),
    )
}

REQUEST_TYPES = frozenset(t for t, s in EVENTS.items() if s.direction == "request")
CONTROL_TYPES = frozenset(t for t, s in EVENTS.items() if s.direction == "control")
CONSUMED_TYPES = REQUEST_TYPES | CONTROL_TYPES
