"""Text kinds: content.generated, theme.analyzed and validation.completed."""

from __future__ import annotations

from llm_consumer.events import catalog
from llm_consumer.events import content as shapes
from llm_consumer.events.requests import STRUCTURED_KINDS, ContentKind, ContentRequested
from llm_consumer.events.results import (
    ContentGenerated,
    ElementAssessment,
    ThemeAnalyzed,
    ValidationCompleted,
    ValidationIssue,
)
from llm_consumer.handlers.base import Deps, Reply, Request
from llm_consumer.handlers.chat import handle_chat
from llm_consumer.handlers.render import render_text
from llm_consumer.handlers.text_generation import generate


def _content_request(request: Request) -> ContentRequested:
    assert isinstance(request.data, ContentRequested)
    return request.data


async def handle_content(request: Request, deps: Deps) -> list[Reply]:
    """Every narrative kind: structured content plus its readable text."""
    data = _content_request(request)
    result = await generate(request, deps, shapes.CONTENT_MODELS[data.kind])
    content = result.content.model_dump(mode="json")
    return [Reply(catalog.CONTENT_GENERATED, ContentGenerated(
        request_id=request.id,
        kind=data.kind.value,
        content=content,
        text=render_text(content),
        model_used=result.model_used,
        fallback_used=result.fallback_used,
        token_usage=result.usage,
        duration_ms=request.elapsed_ms(),
    ))]


async def handle_theme_analyze(request: Request, deps: Deps) -> list[Reply]:
    result = await generate(request, deps, shapes.ThemeAnalysis)
    analysis = result.content
    return [Reply(catalog.THEME_ANALYZED, ThemeAnalyzed(
        request_id=request.id,
        theme_category=analysis.theme_category,
        confidence=analysis.confidence,
        elements={
            finding.element: ElementAssessment(assessment=finding.assessment, score=finding.score)
            for finding in analysis.elements
        },
        recommendations=list(analysis.recommendations),
        model_used=result.model_used,
        token_usage=result.usage,
        duration_ms=request.elapsed_ms(),
    ))]


async def handle_content_validate(request: Request, deps: Deps) -> list[Reply]:
    result = await generate(request, deps, shapes.ContentValidation)
    verdict = result.content
    return [Reply(catalog.VALIDATION_COMPLETED, ValidationCompleted(
        request_id=request.id,
        valid=verdict.valid,
        score=verdict.score,
        issues=[ValidationIssue(**issue.model_dump()) for issue in verdict.issues],
        model_used=result.model_used,
        token_usage=result.usage,
        duration_ms=request.elapsed_ms(),
    ))]


CONTENT_HANDLERS = {
    kind: handle_content
    for kind in STRUCTURED_KINDS
    if kind not in (ContentKind.THEME_ANALYZE, ContentKind.CONTENT_VALIDATE)
} | {
    ContentKind.THEME_ANALYZE: handle_theme_analyze,
    ContentKind.CONTENT_VALIDATE: handle_content_validate,
    ContentKind.CHAT_COMPLETION: handle_chat,
}
