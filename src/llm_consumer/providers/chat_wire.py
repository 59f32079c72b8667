"""Chat Completions answers read as plain data: a completion's JSON body, or a stream's chunks.

The SDK's pydantic models cost more than the rest of the service's work on a streamed answer
(one model per chunk, 60% of the streaming profile). The service reads five fields, so it
reads them from the decoded JSON and checks their types itself: a body that is no completion
raises `NotACompletion`; a field of the wrong type counts as absent (a missing usage is then
estimated, as for servers that send none). Live calls and Batch API output lines
(batch/answers.py) are read the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


class NotACompletion(ValueError):
    """The body is not a chat completion: not JSON, or no choice with a message."""


@dataclass(frozen=True, slots=True)
class ReportedUsage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    refusal: str | None
    finish_reason: str | None
    model: str | None
    usage: ReportedUsage | None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def usage_of(value: Any) -> ReportedUsage | None:
    """The server's token counts, when it sent all three as integers."""
    counts = _mapping(value)
    prompt, completion = counts.get("prompt_tokens"), counts.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    total = counts.get("total_tokens")
    return ReportedUsage(prompt, completion, total if isinstance(total, int)
                         else prompt + completion)


def completion_of(body: bytes) -> Completion:
    """The first choice of a (non-streamed) chat completion body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise NotACompletion(f"not JSON: {err}") from err
    return completion_from(data)


def completion_from(data: Any) -> Completion:
    """The first choice of a chat completion already decoded (a Batch API output line's
    `response.body`)."""
    choices = _mapping(data).get("choices")
    if not isinstance(choices, list) or not choices:
        raise NotACompletion("no choices")
    choice = _mapping(choices[0])
    message = choice.get("message")
    if not isinstance(message, dict):
        raise NotACompletion("the first choice has no message")
    return Completion(text=_text(message.get("content")) or "",
                      refusal=_text(message.get("refusal")),
                      finish_reason=_text(choice.get("finish_reason")),
                      model=_text(data.get("model")), usage=usage_of(data.get("usage")))


@dataclass(slots=True)
class StreamedCompletion:
    """A streamed completion as its chunks arrive: `take` each decoded chunk in order."""

    model: str | None = None
    finish_reason: str | None = None
    usage: ReportedUsage | None = None
    parts: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def take(self, chunk: Any) -> str | None:
        """Fold one chunk in; the text it adds to the answer, if any."""
        data = _mapping(chunk)
        self.model = _text(data.get("model")) or self.model
        if data.get("usage") is not None:
            self.usage = usage_of(data["usage"]) or self.usage
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            return None
        choice = _mapping(choices[0])
        self.finish_reason = _text(choice.get("finish_reason")) or self.finish_reason
        delta = _mapping(choice.get("delta"))
        refusal = _text(delta.get("refusal"))
        if refusal:
            self.refusals.append(refusal)
        content = _text(delta.get("content"))
        if content:
            self.parts.append(content)
            return content
        return None

    def result(self) -> Completion:
        return Completion(text="".join(self.parts), refusal="".join(self.refusals) or None,
                          finish_reason=self.finish_reason, model=self.model, usage=self.usage)
