"""The seams between handlers and the outside world."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from llm_consumer.events.results import TokenUsage


@dataclass(frozen=True, slots=True)
class Turn:
    """One chat turn after the service's system message: a caller's system (persona), user or
    assistant turn."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class TextJob:
    """One completion. With a `schema` the answer must be JSON matching it; without one it is
    free text (chat). The model sees `system` (the service's rules), then `messages` when given
    (a chat history), else the one `user` message."""

    system: str
    user: str
    schema_name: str
    schema: dict[str, Any] | None
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    messages: tuple[Turn, ...] = ()

    def turns(self) -> tuple[Turn, ...]:
        """What follows the system message: the history, or the single user message."""
        return self.messages or (Turn("user", self.user),)


@dataclass(frozen=True, slots=True)
class TextCompletion:
    text: str  # the raw answer, expected to be JSON
    model_used: str
    usage: TokenUsage
    fallback_used: bool = False
    finish_reason: str | None = None


class StreamSink(Protocol):
    """Where a streaming completion sends its text as it arrives."""

    async def delta(self, text: str) -> None: ...

    async def restart(self, reason: str) -> None:
        """The text sent so far is void: the stream starts again (e.g. on a fallback model)."""
        ...


# Called with (model, response headers, HTTP status) after every provider response, so rate
# limits can follow what the provider says about its remaining budget.
HeaderObserver = Callable[[str, Mapping[str, str], int], Awaitable[None]]


class TextProvider(Protocol):
    name: str

    def models_for(self, requested: str | None) -> tuple[str, ...]:
        """The models a job will try, in order (the requested or default one, then fallbacks)."""
        ...

    async def complete(self, job: TextJob, sink: StreamSink | None = None) -> TextCompletion:
        """Run one completion (streamed into `sink` when given); raise llm_consumer.errors.*."""
        ...

    async def aclose(self) -> None: ...
