"""`chat.completion`: the assistant's next message for a caller's chat history.

The history is fitted to the model's window (prompts/chat.py), sent after the service's own
system message, and answered as free text or, with `response_schema`, as a JSON object that is
tidied (answer_json) and validated against that schema. An empty or off-schema answer gets one
repair call (the model is told what was wrong), then fails clearly. The result is
`content.generated` with `content` the assistant message.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from functools import cache
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from llm_consumer.errors import InvalidRequest, PermanentFailure
from llm_consumer.events import catalog
from llm_consumer.events.requests import ContentRequested
from llm_consumer.events.results import ContentGenerated, TokenUsage
from llm_consumer.handlers.answer_json import tidy
from llm_consumer.handlers.base import Deps, Reply, Request
from llm_consumer.handlers.progress import ProgressSink
from llm_consumer.handlers.text_generation import OFF_LOOP_BYTES
from llm_consumer.prompts.builder import kind_templates
from llm_consumer.prompts.chat import chat_system_message, fit_turns
from llm_consumer.providers.base import StreamSink, TextCompletion, TextJob, Turn

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

log = structlog.get_logger(__name__)
SCHEMA_NAME = "chat_answer"


@cache
def _validator(schema_json: str) -> Draft202012Validator:
    """A validator for a caller's schema (the same schema text reuses its validator).
    jsonschema is imported here, by the first request that names a schema: a worker that
    never sees one does not pay its 2 MB."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    schema = orjson.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        raise InvalidRequest(f"response_schema is not a valid JSON Schema: {error.message}"
                             ) from None
    return Draft202012Validator(schema)


def _problem(text: str, validator: Draft202012Validator | None) -> tuple[str | None, Any]:
    """(why the answer is unusable or None, the parsed object of a schema answer)."""
    if not text.strip():
        return "the answer was empty", None
    if validator is None:
        return None, None
    body, _ = tidy(text)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "the answer was not a JSON object", None
    error = next(iter(validator.iter_errors(parsed)), None)
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "answer"
        return f"the answer did not match the schema ({where}: {error.message[:200]})", None
    return None, parsed


def _add(a: TokenUsage, b: TokenUsage) -> TokenUsage:
    return TokenUsage(prompt_tokens=a.prompt_tokens + b.prompt_tokens,
                      completion_tokens=a.completion_tokens + b.completion_tokens,
                      total_tokens=a.total_tokens + b.total_tokens,
                      estimated=a.estimated or b.estimated)


def chat_job(data: ContentRequested, deps: Deps) -> TextJob:
    """The provider job for a chat request: its history fitted to the chain's window."""
    provider = deps.text
    assert provider is not None and data.messages
    options = data.model
    schema = data.response_schema
    if schema is not None:
        _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode())
    models = provider.models_for(options.name if options else None)
    desired = (options.max_tokens if options and options.max_tokens
               else kind_templates()[data.kind.value].max_tokens)
    system = chat_system_message(with_schema=schema is not None)
    fixed = system + (orjson.dumps(schema).decode() if schema is not None else "")
    fitted = fit_turns(fixed, [Turn(m.role, m.content) for m in data.messages],
                       budget=deps.windows.budget_for(models, desired))
    if fitted.dropped:
        log.info("chat.fitted", dropped_turns=fitted.dropped, kept_turns=len(fitted.turns),
                 prompt_tokens=fitted.prompt_tokens)
    return TextJob(system=system, user="", schema_name=SCHEMA_NAME, schema=schema,
                   model=options.name if options else None,
                   temperature=options.temperature if options else None,
                   max_tokens=fitted.max_tokens,
                   top_p=options.top_p if options else None,
                   stop=options.stops if options else (),
                   messages=fitted.turns)


async def handle_chat(request: Request, deps: Deps) -> list[Reply]:
    data = request.data
    assert isinstance(data, ContentRequested)
    if deps.text is None:
        raise PermanentFailure("no text provider is configured", code="no_provider")
    # Counting a long history with the embedded model's tokenizer takes up to seconds: off the
    # event loop, as for a large context (text_generation.OFF_LOOP_BYTES).
    size = sum(len(turn.content) for turn in data.messages or ())
    job = (chat_job(data, deps) if size < OFF_LOOP_BYTES
           else await asyncio.to_thread(chat_job, data, deps))
    validator = (_validator(orjson.dumps(job.schema, option=orjson.OPT_SORT_KEYS).decode())
                 if job.schema is not None else None)
    sink: StreamSink | None = ProgressSink(request) if data.stream else None
    completion: TextCompletion = await deps.text.complete(job, sink)
    usage = completion.usage
    problem, parsed = _problem(completion.text, validator)
    first_try = problem is None
    if problem is not None:  # one repair, as for the other kinds
        log.info("answer.repairing", problem=problem, model=completion.model_used)
        if sink is not None:
            await sink.restart(f"answer rejected: {problem}; asking once more")
        again = ("with one complete JSON object that matches the schema" if validator
                 else "to the last user message")
        note = Turn("system", f"Your previous answer was rejected: {problem}. Answer again "
                              f"{again}.")
        completion = await deps.text.complete(replace(job, messages=(*job.messages, note)),
                                              sink)
        usage = _add(usage, completion.usage)
        problem, parsed = _problem(completion.text, validator)
    if problem is not None:
        raise PermanentFailure(
            f"the model's answer was unusable after one repair attempt: {problem}",
            code="internal")
    # A schema answer's text is the validated object as JSON (fences or prose around it gone).
    text = orjson.dumps(parsed).decode() if validator is not None else completion.text
    content: dict[str, Any] = {"role": "assistant", "content": text}
    if parsed is not None:
        content["parsed"] = parsed
    log.info("answer.accepted", first_try=first_try, kind=data.kind.value,
             model=completion.model_used, fallback=completion.fallback_used,
             request_id=request.id)
    return [Reply(catalog.CONTENT_GENERATED, ContentGenerated(
        request_id=request.id, kind=data.kind.value, content=content, text=text,
        model_used=completion.model_used, fallback_used=completion.fallback_used,
        token_usage=usage, duration_ms=request.elapsed_ms()))]
