"""Events the service publishes (the `data` of each)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llm_consumer.errors import ErrorCode


class _Outbound(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenUsage(_Outbound):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    estimated: bool = Field(False, description="true when counted by the service, not the model")


class ContentGenerated(_Outbound):
    """Result of every `content.requested` kind except theme.analyze and content.validate."""

    request_id: str
    kind: str
    content: dict[str, Any] = Field(description="structured result; shape per kind in schemas/")
    text: str = Field(description="a readable rendering of content")
    model_used: str
    fallback_used: bool = False
    token_usage: TokenUsage
    cached: bool = False
    duration_ms: int = Field(ge=0)


class ElementAssessment(_Outbound):
    assessment: str
    score: float = Field(ge=0, le=1, description="fit of this element to the target theme")


class ThemeAnalyzed(_Outbound):
    """Result of `theme.analyze`."""

    request_id: str
    theme_category: str
    confidence: float = Field(ge=0, le=1)
    elements: dict[str, ElementAssessment]
    recommendations: list[str]
    model_used: str
    token_usage: TokenUsage
    cached: bool = False
    duration_ms: int = Field(ge=0)


class ValidationIssue(_Outbound):
    severity: Literal["info", "warning", "error"]
    message: str
    field: str | None = None


class ValidationCompleted(_Outbound):
    """Result of `content.validate`."""

    request_id: str
    valid: bool
    score: float = Field(ge=0, le=1)
    issues: list[ValidationIssue]
    model_used: str
    token_usage: TokenUsage
    cached: bool = False
    duration_ms: int = Field(ge=0)


class StoredImage(_Outbound):
    url: str
    key: str
    content_type: str
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    bytes: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ImageGenerated(_Outbound):
    """Result of `image.requested`. Image bytes never travel inside events."""

    request_id: str
    kind: str
    images: list[StoredImage]
    provider: str
    model_used: str
    cached: bool = False
    duration_ms: int = Field(ge=0)


class ContentProgress(_Outbound):
    """A streamed text delta, in order (`seq` 0, 1, 2, ...), before the final result."""

    request_id: str
    seq: int = Field(ge=0)
    delta: str


class ErrorInfo(_Outbound):
    code: ErrorCode
    message: str
    retryable: bool


class GenerationFailed(_Outbound):
    request_id: str
    request_type: str
    kind: str | None = None
    error: ErrorInfo
    attempts: int = Field(ge=0)


JobState = Literal["queued", "running", "deferred", "completed", "failed", "cancelled"]


class JobStatus(_Outbound):
    request_id: str
    state: JobState
    attempt: int = Field(ge=0)


class RateLimitNotice(_Outbound):
    """`rate_limit.warning` (past 80% of a limit) and `rate_limit.exceeded`."""

    scope: Literal["model", "operation", "user", "global", "provider"]
    key: str
    limit: int = Field(ge=0)
    window_s: float = Field(gt=0)
    remaining: int = Field(ge=0)
    retry_after_s: float = Field(ge=0)


class HeartbeatMetrics(_Outbound):
    in_flight: int = Field(ge=0)
    processed: int = Field(ge=0)
    error_rate: float = Field(ge=0, le=1)
    p95_ms: float = Field(ge=0)


class ServiceHeartbeat(_Outbound):
    instance: str
    status: Literal["ok", "degraded", "down"]
    components: dict[str, Literal["ok", "degraded", "down", "disabled"]]
    metrics: HeartbeatMetrics
