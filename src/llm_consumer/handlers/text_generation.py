"""Ask the text provider for a structured answer and validate it, with one repair attempt."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from llm_consumer.errors import PermanentFailure
from llm_consumer.events.requests import ContentRequested
from llm_consumer.events.results import TokenUsage
from llm_consumer.handlers.base import Deps
from llm_consumer.prompts.builder import build_prompt, check_context, resolve_theme
from llm_consumer.providers.base import TextCompletion, TextJob

ContentT = TypeVar("ContentT", bound=BaseModel)
REFUSAL_MARKERS = ("i'm sorry", "i cannot", "i can't", "as an ai")


@dataclass(frozen=True, slots=True)
class Generated(Generic[ContentT]):
    content: ContentT
    model_used: str
    fallback_used: bool
    usage: TokenUsage


@cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def _parse(model: type[ContentT], completion: TextCompletion) -> ContentT:
    return model.model_validate_json(completion.text)


def _add(a: TokenUsage, b: TokenUsage) -> TokenUsage:
    return TokenUsage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        total_tokens=a.total_tokens + b.total_tokens,
        estimated=a.estimated or b.estimated,
    )


def _problem(completion: TextCompletion, error: ValidationError | ValueError) -> str:
    if not completion.text.strip():
        return "the answer was empty"
    if completion.text.lstrip().lower().startswith(REFUSAL_MARKERS):
        return "the model refused"
    if completion.finish_reason == "length":
        return "the answer was cut off at the token limit"
    return f"the answer did not match the schema: {str(error).splitlines()[0]}"


async def generate(
    data: ContentRequested, deps: Deps, model: type[ContentT]
) -> Generated[ContentT]:
    if deps.text is None:
        raise PermanentFailure("no text provider is configured", code="no_provider")
    check_context(data.kind, data.context)
    prompt = build_prompt(
        data.kind, data.context, resolve_theme(data.theme), context_chars=deps.context_chars
    )
    options = data.model
    job = TextJob(
        system=prompt.system,
        user=prompt.user,
        schema_name=model.__name__,
        schema=_schema(model),
        model=options.name if options else None,
        temperature=options.temperature if options else None,
        max_tokens=(options.max_tokens if options and options.max_tokens else prompt.max_tokens),
    )
    completion = await deps.text.complete(job)
    try:
        return Generated(_parse(model, completion), completion.model_used,
                         completion.fallback_used, completion.usage)
    except (ValidationError, ValueError) as error:
        problem = _problem(completion, error)
    repair = TextJob(
        system=job.system,
        user=f"{job.user}\n\nYour previous answer was rejected: {problem}. "
        "Answer again with one complete JSON object that matches the schema.",
        schema_name=job.schema_name,
        schema=job.schema,
        model=job.model,
        temperature=job.temperature,
        max_tokens=job.max_tokens,
    )
    second = await deps.text.complete(repair)
    usage = _add(completion.usage, second.usage)
    try:
        return Generated(_parse(model, second), second.model_used, second.fallback_used, usage)
    except (ValidationError, ValueError) as error:
        raise PermanentFailure(
            f"the model's answer was unusable after one repair attempt: {_problem(second, error)}",
            code="internal",
        ) from None
