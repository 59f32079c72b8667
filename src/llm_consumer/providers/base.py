"""The seams between handlers and the outside world."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from llm_consumer.events.results import TokenUsage


@dataclass(frozen=True, slots=True)
class TextJob:
    """One structured-output completion: the answer must be JSON matching `schema`."""

    system: str
    user: str
    schema_name: str
    schema: dict[str, Any]
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class TextCompletion:
    text: str  # the raw answer, expected to be JSON
    model_used: str
    usage: TokenUsage
    fallback_used: bool = False
    finish_reason: str | None = None


class TextProvider(Protocol):
    name: str

    async def complete(self, job: TextJob) -> TextCompletion:
        """Run one completion; raise llm_consumer.errors.* on failure."""
        ...

    async def aclose(self) -> None: ...
