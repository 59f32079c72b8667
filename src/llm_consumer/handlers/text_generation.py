"""Ask the text provider for a structured answer that fits the model's window, validate it,
and repair it once when it does not parse or match the schema."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, TypeVar

import orjson
import structlog
from pydantic import BaseModel, ValidationError

from llm_consumer.errors import PermanentFailure
from llm_consumer.events.requests import ContentRequested
from llm_consumer.events.results import TokenUsage
from llm_consumer.handlers.answer_json import read_answer
from llm_consumer.handlers.base import Deps, Request
from llm_consumer.handlers.progress import ProgressSink
from llm_consumer.prompts.builder import (
    check_context,
    kind_templates,
    resolve_theme,
    system_message,
    user_message,
)
from llm_consumer.prompts.fitting import fit_data, serialize
from llm_consumer.providers.base import StreamSink, TextCompletion, TextJob, TextProvider

log = structlog.get_logger(__name__)
ContentT = TypeVar("ContentT", bound=BaseModel)
REFUSAL_MARKERS = ("i'm sorry", "i cannot", "i can't", "as an ai", "i am unable")
OFF_LOOP_BYTES = 64_000  # a context this large is fitted on a worker thread


@dataclass(frozen=True, slots=True)
class Generated(Generic[ContentT]):
    content: ContentT
    model_used: str
    fallback_used: bool
    usage: TokenUsage
    first_try: bool


@cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def _add(a: TokenUsage, b: TokenUsage) -> TokenUsage:
    return TokenUsage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        total_tokens=a.total_tokens + b.total_tokens,
        estimated=a.estimated or b.estimated,
    )


def problem_with(completion: TextCompletion, model: type[BaseModel]) -> str | None:
    """Why an answer is unusable (empty, refused, cut off, not the schema), or None if fine.

    The answer is tidied of small slips first (see answer_json)."""
    text = completion.text.strip()
    if not text:
        return "the answer was empty"
    if text.lower().startswith(REFUSAL_MARKERS):
        return "the model refused"
    try:
        read_answer(text, model)
    except ValidationError as error:
        if completion.finish_reason == "length":
            return "the answer was cut off at the token limit"
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        return f"the answer did not match the schema ({where}: {first['msg']})"
    return None


def _job(request: Request, deps: Deps, provider: TextProvider,
         model: type[BaseModel]) -> TextJob:
    data = request.data
    assert isinstance(data, ContentRequested)
    check_context(data.kind, data.inputs)
    template = kind_templates()[data.kind.value]
    options = data.model
    models = provider.models_for(options.name if options else None)
    desired = options.max_tokens if options and options.max_tokens else template.max_tokens
    budget = deps.windows.budget_for(models, desired)
    resolved = resolve_theme(data.theme)
    theme = (resolved.as_data() if resolved else None) or None
    # Only the service's text is instructions; the theme and the context are quoted data,
    # fitted to the window together.
    schema = _schema(model)
    fixed = (system_message(with_theme=theme is not None)
             + user_message(template.instruction, "", "" if theme else None)
             + orjson.dumps(schema).decode())
    fitted = fit_data(data.inputs, theme, fixed_text=fixed, budget=budget,
                      keep=frozenset(template.required_context))
    system = system_message(with_theme=fitted.theme is not None)
    report = fitted.report
    if report.actions:
        log.info("context.fitted", window=budget.window, original_tokens=report.original_tokens,
                 fitted_tokens=report.fitted_tokens, saved_tokens=report.saved_tokens,
                 exact=report.exact_count, steps=len(report.actions))
    return TextJob(
        system=system,
        user=user_message(template.instruction, serialize(fitted.context),
                          serialize(fitted.theme) if fitted.theme is not None else None),
        schema_name=model.__name__,
        schema=schema,
        model=options.name if options else None,
        temperature=options.temperature if options else None,
        max_tokens=report.max_tokens,
        top_p=options.top_p if options else None,
    )


async def _prepared_job(request: Request, deps: Deps, provider: TextProvider,
                        model: type[BaseModel]) -> TextJob:
    """`_job`, on a worker thread for a large context: fitting a megabyte takes from a fraction
    of a second to seconds (the embedded model's tokenizer), and the event loop must keep
    serving the other requests meanwhile."""
    data = request.data
    assert isinstance(data, ContentRequested)
    if len(orjson.dumps(data.inputs)) < OFF_LOOP_BYTES:
        return _job(request, deps, provider, model)
    return await asyncio.to_thread(_job, request, deps, provider, model)


async def generate(request: Request, deps: Deps, model: type[ContentT]) -> Generated[ContentT]:
    provider = deps.text
    if provider is None:
        raise PermanentFailure("no text provider is configured", code="no_provider")
    job = await _prepared_job(request, deps, provider, model)
    assert isinstance(request.data, ContentRequested)
    if deps.batch is not None and deps.batch.wants(request):
        await deps.batch.submit(request, job)  # raises Batched: answered when the batch ends
    sink: StreamSink | None = ProgressSink(request) if request.data.stream else None
    completion = await provider.complete(job, sink)
    problem = problem_with(completion, model)
    usage = completion.usage
    first_try = problem is None
    if problem is not None:
        log.info("answer.repairing", problem=problem, model=completion.model_used)
        if sink is not None:
            await sink.restart(f"answer rejected: {problem}; asking once more")
        repair = TextJob(
            system=job.system,
            user=f"{job.user}\n\nYour previous answer was rejected: {problem}. "
            "Answer again with one complete JSON object that matches the schema.",
            schema_name=job.schema_name, schema=job.schema, model=job.model,
            temperature=job.temperature, max_tokens=job.max_tokens, top_p=job.top_p,
        )
        completion = await provider.complete(repair, sink)
        usage = _add(usage, completion.usage)
        problem = problem_with(completion, model)
        if problem is not None:
            raise PermanentFailure(
                f"the model's answer was unusable after one repair attempt: {problem}",
                code="internal")
    answer = read_answer(completion.text.strip(), model)
    log.info("answer.accepted", first_try=first_try, model=completion.model_used,
             fallback=completion.fallback_used, tidied=list(answer.slips),
             kind=request.data.kind.value, request_id=request.id)
    return Generated(answer.content, completion.model_used, completion.fallback_used, usage,
                     first_try)
