"""OpenAI (or any OpenAI-compatible server) chat completions with structured output.

One job walks the model chain (requested or default model, then `OPENAI_FALLBACK_MODELS`):
`fallback_policy.next_step` decides after each failure. Calls go out through `chat_http`
(plain aiohttp, no retries of its own), so they never multiply behind our back. A stream that
breaks after text was sent restarts on the next model and tells the sink to drop what it had.
How each call is phrased (structured-output mode, token-limit parameter, parameters a model
refuses) comes from `capabilities`: a refusal that a different phrasing avoids is retried at
once on the same model, and remembered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
import structlog

from llm_consumer import metrics
from llm_consumer.errors import PermanentFailure, ServiceError, TransientFailure
from llm_consumer.events.results import TokenUsage
from llm_consumer.prompts.tokens import MESSAGE_OVERHEAD_TOKENS, counter_for
from llm_consumer.providers.base import HeaderObserver, StreamSink, TextCompletion, TextJob
from llm_consumer.providers.breaker import BreakerBoard, CircuitOpen, trips
from llm_consumer.providers.capabilities import (
    Capabilities,
    CapabilityBook,
    SharedBook,
    StructuredSetting,
    TokenSetting,
)
from llm_consumer.providers.chat_http import (
    ChatEndpoint,
    StreamFailed,
    TransportFailure,
    events,
    failure_of,
    read,
)
from llm_consumer.providers.chat_wire import (
    Completion,
    NotACompletion,
    ReportedUsage,
    StreamedCompletion,
    completion_of,
)
from llm_consumer.providers.fallback_policy import next_step
from llm_consumer.providers.openai_errors import RequestRefused, call_error, scrub
from llm_consumer.providers.response_format import response_format, schema_instruction
from llm_consumer.tracing import outgoing

log = structlog.get_logger(__name__)


OPENAI_BASE_URL = "https://api.openai.com/v1"
# Steps down one call may take (structured-output rungs, token parameter, dropped parameters).
MAX_ADAPTATIONS = 6


class StreamBroken(TransientFailure):
    """The connection dropped after some text had been streamed."""


def _usage(model: str, system: str, job: TextJob, text: str,
           reported: ReportedUsage | None) -> TokenUsage:
    """The server's count, or (when it sends none, as some do on streams) the tokenizer's."""
    if reported is not None:
        return TokenUsage(prompt_tokens=reported.prompt_tokens,
                          completion_tokens=reported.completion_tokens,
                          total_tokens=reported.total_tokens)
    counter = counter_for(model)
    turns = job.turns()
    prompt = (counter.count(system) + sum(counter.count(turn.content) for turn in turns)
              + (1 + len(turns)) * MESSAGE_OVERHEAD_TOKENS)
    completion = counter.count(text)
    return TokenUsage(prompt_tokens=prompt, completion_tokens=completion,
                      total_tokens=prompt + completion, estimated=True)


def _check_answer(text: str, refusal: str | None, finish_reason: str | None) -> None:
    if refusal:
        raise PermanentFailure(f"openai refused: {refusal}", code="content_policy")
    if finish_reason == "content_filter" and not text:
        raise PermanentFailure("openai filtered the answer", code="content_policy")


class OpenAITextProvider:
    name = "openai"

    def __init__(self, api_key: str, *, base_url: str | None, model: str, timeout_s: float,
                 fallback_models: tuple[str, ...] = (),
                 observe: HeaderObserver | None = None,
                 structured_output: StructuredSetting = "auto",
                 token_limit_param: TokenSetting = "auto",
                 breakers: BreakerBoard | None = None,
                 shared_capabilities: SharedBook | None = None) -> None:
        self.model = model
        self._fallbacks = fallback_models
        self.breakers = breakers or BreakerBoard(self.name, models=(model, *fallback_models))
        self._observe = observe
        self.capabilities = CapabilityBook(base_url or OPENAI_BASE_URL,
                                           structured=structured_output,
                                           token_param=token_limit_param,
                                           shared=shared_capabilities)
        # Plain aiohttp, not the SDK's client (chat_http.py says why); no retries of its own.
        self._endpoint = ChatEndpoint(api_key, base_url or OPENAI_BASE_URL, timeout_s=timeout_s)

    def models_for(self, requested: str | None) -> tuple[str, ...]:
        chain = (requested or self.model, *self._fallbacks)
        return tuple(dict.fromkeys(chain))

    async def complete(self, job: TextJob, sink: StreamSink | None = None) -> TextCompletion:
        models = self.models_for(job.model)
        index, waits, adaptations = 0, 0, 0
        while True:
            model = models[index]
            try:
                completion = await self._guarded_call(job, model, sink)
            except ServiceError as error:
                adapted = isinstance(error, RequestRefused) and error.adapted is not None
                step = next_step(error, has_next_model=index + 1 < len(models),
                                 waits_used=waits,
                                 can_adapt=adapted and adaptations < MAX_ADAPTATIONS)
                log.info("provider.failed", model=model, code=error.code, step=step.action)
                if step.action == "adapt":
                    adaptations += 1
                    continue
                if step.action == "raise":
                    if isinstance(error, StreamBroken) and sink is not None:
                        await sink.restart(f"stream from {model} broke; retrying later")
                    raise
                if step.action == "wait":
                    waits += 1
                    await asyncio.sleep(step.delay_s)
                    continue
                index += 1
                if isinstance(error, StreamBroken) and sink is not None:
                    await sink.restart(f"stream from {model} broke; restarting on "
                                       f"{models[index]}")
                continue
            fallback = index > 0
            return TextCompletion(text=completion.text, model_used=completion.model_used,
                                  usage=completion.usage, fallback_used=fallback,
                                  finish_reason=completion.finish_reason)

    def batch_body(self, job: TextJob) -> dict[str, Any]:
        """The body a realtime call of `job` would send to its first model (not streamed), as
        the model's capabilities stand now: what one line of a Batch API input file holds."""
        model = self.models_for(job.model)[0]
        return self._fields(job, model, self.capabilities.get(model), stream=False)

    async def _guarded_call(self, job: TextJob, model: str,
                            sink: StreamSink | None) -> TextCompletion:
        """`_call` through `model`'s circuit breaker: refused at once (CircuitOpen, which the
        chain falls back from) while it is open; its outcome is the breaker's verdict."""
        breaker = self.breakers.breaker(model)
        if not breaker.allow():
            metrics.BREAKER_SKIPPED.labels(self.name, model).inc()
            raise CircuitOpen(self.name, model, breaker.retry_after())
        try:
            completion = await self._call(job, model, sink)
        except ServiceError as error:
            if trips(error):
                breaker.failed()
            elif isinstance(error, TransientFailure):  # rate-limited: no verdict
                breaker.released()
            else:  # the server answered (a refusal is not an outage)
                breaker.succeeded()
            raise
        except BaseException:
            breaker.released()
            raise
        breaker.succeeded()
        return completion

    async def _call(self, job: TextJob, model: str, sink: StreamSink | None) -> TextCompletion:
        """One call phrased as `model`'s capabilities say; a refusal learns from the answer."""
        async with self.capabilities.probing(model) as caps:
            fields = self._fields(job, model, caps, stream=sink is not None)
            try:
                completion = await (self._stream(job, model, caps, fields, sink) if sink
                                    else self._plain(job, model, caps, fields))
            except RequestRefused as refused:
                refused.adapted = self.capabilities.adapt(model, caps, refused.refusal,
                                                          frozenset(fields))
                raise
            await self.capabilities.confirm(model, caps)
        limit = job.max_tokens
        if (limit is not None and not completion.usage.estimated
                and completion.usage.completion_tokens > limit):
            await self.capabilities.limit_ignored(model, caps)
        return completion

    @staticmethod
    def _system(job: TextJob, caps: Capabilities) -> str:
        if job.schema is None:  # a free-text answer
            return job.system
        return job.system + schema_instruction(caps.structured, job.schema)

    @classmethod
    def _fields(cls, job: TextJob, model: str, caps: Capabilities, *,
                stream: bool) -> dict[str, Any]:
        """The request body, as the Chat Completions API defines it, phrased per `caps`."""
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "system", "content": cls._system(job, caps)},
                         *({"role": turn.role, "content": turn.content}
                           for turn in job.turns())],
        }
        fmt = response_format(caps, job.schema_name, job.schema) if job.schema else None
        if fmt is not None:
            body["response_format"] = fmt
        if job.max_tokens is not None:
            body[caps.token_param] = job.max_tokens
        if job.temperature is not None and "temperature" not in caps.dropped:
            body["temperature"] = job.temperature
        if job.top_p is not None and "top_p" not in caps.dropped:
            body["top_p"] = job.top_p
        if job.stop and "stop" not in caps.dropped:
            body["stop"] = list(job.stop)
        if stream:
            body["stream"] = True
            if caps.stream_options:
                body["stream_options"] = {"include_usage": True}
        return body

    async def _post(self, model: str, body: bytes) -> aiohttp.ClientResponse:
        """One HTTP call of `body` (bytes we encoded), with the current trace context: the
        response of a 2xx answer, its body unread. Headers go to the observer; an error
        answer or a failed call raises the service's error."""
        try:
            response = await self._endpoint.post(body, outgoing())
        except TransportFailure as err:
            raise call_error(err, model) from err
        try:
            await self._notify(model, response.headers, response.status)
            if response.status >= 300:
                failure = await failure_of(response)
                raise call_error(failure, model) from failure
        except BaseException:  # the error read, or the call cancelled: the connection goes back
            response.release()
            raise
        return response

    async def _notify(self, model: str, headers: Mapping[str, str], status: int) -> None:
        if self._observe is not None:
            try:
                await self._observe(model, headers, status)
            except Exception:  # the observer must never fail a generation
                log.warning("provider.observer_failed", exc_info=True)

    async def _plain(self, job: TextJob, model: str, caps: Capabilities,
                     fields: dict[str, Any]) -> TextCompletion:
        response = await self._post(model, orjson.dumps(fields))
        try:
            body = await read(response)
        except TransportFailure as err:
            raise call_error(err, model) from err
        finally:
            response.release()
        try:
            answer = completion_of(body)
        except NotACompletion as err:
            raise TransientFailure(f"openai answered with no usable completion: {scrub(str(err))}",
                                   code="provider_unavailable") from err
        return self._finished(job, model, caps, answer)

    def _finished(self, job: TextJob, model: str, caps: Capabilities,
                  answer: Completion) -> TextCompletion:
        _check_answer(answer.text, answer.refusal, answer.finish_reason)
        return TextCompletion(text=answer.text, model_used=answer.model or model,
                              usage=_usage(model, self._system(job, caps), job, answer.text,
                                           answer.usage),
                              finish_reason=answer.finish_reason)

    async def _stream(self, job: TextJob, model: str, caps: Capabilities,
                      fields: dict[str, Any], sink: StreamSink) -> TextCompletion:
        response = await self._post(model, orjson.dumps(fields))
        answer = StreamedCompletion()
        try:
            async for chunk in events(response):
                delta = answer.take(chunk)
                if delta is not None:
                    await sink.delta(delta)
        except (TransportFailure, StreamFailed) as err:
            error = call_error(err, model)
            if answer.parts:
                raise StreamBroken(f"stream broke after {len(answer.parts)} chunks: "
                                   f"{error.message}", code="provider_unavailable") from err
            raise error from err
        finally:
            response.release()
        if answer.finish_reason is None:  # llama-cpp-python ends a stream so when another
            # request interrupts it (its default): the answer is unfinished, not empty
            message = f"the stream from {model} ended before the answer finished"
            if answer.parts:
                raise StreamBroken(message, code="provider_unavailable")
            raise TransientFailure(message, code="provider_unavailable")
        return self._finished(job, model, caps, answer.result())

    async def aclose(self) -> None:
        await self._endpoint.aclose()
