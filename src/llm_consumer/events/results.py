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


class ImageQuality(_Outbound):
    """What the service checked on a stored image (every stored image passed these checks)."""

    format: Literal["png", "jpeg", "webp"] = Field(description="format the bytes decoded as")
    contrast: float = Field(ge=0, description=(
        "largest per-channel standard deviation (0-255) on a thumbnail; images under 2 are "
        "refused as blank or uniform"))
    dominant_colors: list[str] = Field(description="sRGB hex, most frequent first")
    palette_distance: float | None = Field(None, ge=0, description=(
        "share-weighted mean CIE76 difference (CIELAB) from the dominant colours to the nearest "
        "colour of the theme palette: ~2 just noticeable, 10-25 same family, >40 unrelated; "
        "absent without a palette"))


class StoredImage(_Outbound):
    url: str = Field(description="where peers fetch the image (file://, s3 endpoint or public URL)")
    key: str = Field(description="store key; pass it as source_image.ref to reuse the image")
    content_type: str
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    bytes: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    quality: ImageQuality


class ImageGenerated(_Outbound):
    """Result of `image.requested`. Image bytes never travel inside events."""

    request_id: str
    kind: str
    images: list[StoredImage]
    provider: str
    model_used: str
    prompt: str | None = Field(
        None, description="the prompt the service wrote (absent for enhance)")
    palette: list[str] = Field(
        default_factory=list, description="theme palette the images were measured against (hex)")
    cached: bool = False
    duration_ms: int = Field(ge=0)


class ContentProgress(_Outbound):
    """A streamed text delta, in order (`seq` 0, 1, 2, ...), before the final result.

    With `reset` true the text received so far is void (the stream restarts, for example on a
    fallback model, or the answer is being repaired); `notice` says why.
    """

    request_id: str
    seq: int = Field(ge=0)
    delta: str
    reset: bool = False
    notice: str | None = None


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


JobState = Literal["queued", "running", "deferred", "batched", "completed", "failed",
                   "cancelled"]


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


class SloShare(_Outbound):
    """One target class over the instance's recent window (SLO_WINDOW_S)."""

    target_s: float = Field(gt=0, description="the target: answered within this many seconds")
    requests: int = Field(ge=0, description="requests answered in the window")
    within_target: int = Field(ge=0)
    share: float | None = Field(None, ge=0, le=1, description=(
        "within_target / requests; absent (null) without requests"))


class SloWarning(_Outbound):
    """`slo.warning`: on one instance, the share of a target class's requests answered within
    target fell under SLO_WARN_BELOW over the last SLO_WINDOW_S (with at least
    SLO_WARN_MIN_REQUESTS requests). At most one per class and instance per window."""

    instance: str
    target: str = Field(description=(
        "the target class: text, image, theme, validation, queue (the queue wait of every "
        "request), or a kind given a target of its own in SLO_TARGETS_S"))
    target_s: float = Field(gt=0)
    share: float = Field(ge=0, le=1, description="within_target / requests")
    level: float = Field(ge=0, le=1, description="the share under which this warning is sent")
    requests: int = Field(ge=1)
    within_target: int = Field(ge=0)
    window_s: float = Field(gt=0)


class HeartbeatMetrics(_Outbound):
    in_flight: int = Field(ge=0)
    processed: int = Field(ge=0)
    error_rate: float = Field(ge=0, le=1)
    p95_ms: float = Field(ge=0)
    request_rate: float = Field(0.0, ge=0, description=(
        "deliveries settled per second over the last SLO_WINDOW_S (what `processed` counts)"))
    slo: dict[str, SloShare] = Field(default_factory=dict, description=(
        "per target class (text, image, theme, validation, queue): requests answered within "
        "target over the last SLO_WINDOW_S"))


class ServiceHeartbeat(_Outbound):
    instance: str
    status: Literal["ok", "degraded", "down"]
    components: dict[str, Literal["ok", "degraded", "down", "disabled"]]
    metrics: HeartbeatMetrics
