"""A real HTTP server speaking the OpenAI chat-completions wire protocol, for tests.

    async with FakeOpenAI() as server:
        server.script(reply('{"a": 1}'), rate_limited(retry_after_ms=250))
        client = AsyncOpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)

It runs on 127.0.0.1 with an ephemeral port inside the test's event loop (aiohttp AppRunner).
Scripted responses are served in order; once the script is empty `server.responder` (when set)
chooses per request from its body, and otherwise a default responder answers with an instance of
the request's `response_format.json_schema.schema` (see `sample_for_schema`).

Before any of that, the server refuses what OpenAI's API refuses (`openai_refusal`): a
non-default temperature or `max_tokens` on reasoning models (gpt-5, o-series), `json_schema` on
models without structured outputs, a strict schema that is not strict, `json_object` without the
word JSON in the messages. `FakeOpenAI(refuse_like_openai=False)` turns that off.

The Batch API is there too (`POST /v1/files`, `GET /v1/files/{id}/content`, `POST /v1/batches`,
`GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`): a batch moves one status per retrieve,
validating -> in_progress -> finalizing -> completed, and its lines are answered (script,
responder, default responder, refusals: as realtime calls) when it completes. `batch_ending`
chooses how batches end: "completed", "failed" (the input file refused), "expired" (no line ran:
an error file of `batch_expired` lines) or "hold" (stays in_progress until changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web

DEFAULT_API_KEY = "sk-test"
DEFAULT_TEXT = "This is a fake answer from the fake OpenAI server."


# --------------------------------------------------------------------------- script entries


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful answer. `content=None` lets the default responder build it from the schema."""

    content: str | None = None
    usage: Mapping[str, int] | None = None  # None: counted from the text (chars / 4)
    include_usage: bool = True  # False: the answer carries no `usage` at all
    finish_reason: str = "stop"
    delay_s: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)
    break_after_chunks: int | None = None  # streaming only: drop the connection after N events
    chunk_count: int = 4  # streaming only: how many content deltas to split the text into
    # streaming only: end with [DONE] but no finish_reason (nor usage), as llama-cpp-python's
    # server does to a stream that a newer request interrupts
    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An HTTP error with OpenAI's error body shape."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    delay_s: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


Scripted = Reply | ErrorReply
Responder = Callable[[dict[str, Any]], Scripted | None]  # per request, from its body


def reply(content: str | None = None, **kwargs: Any) -> Reply:
    return Reply(content, **kwargs)


def hang(delay_s: float, content: str | None = None) -> Reply:
    """An answer that arrives only after `delay_s` (use a longer delay than the client timeout)."""
    return Reply(content, delay_s=delay_s)


def rate_limited(
    *,
    retry_after: str | None = None,
    retry_after_ms: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ErrorReply:
    extra = dict(headers or {})
    if retry_after is not None:
        extra["retry-after"] = retry_after
    if retry_after_ms is not None:
        extra["retry-after-ms"] = retry_after_ms
    return ErrorReply(
        429,
        "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1.",
        "requests",
        code="rate_limit_exceeded",
        headers=extra,
    )


def insufficient_quota() -> ErrorReply:
    return ErrorReply(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        code="insufficient_quota",
    )


def server_error(status: int = 500, **kwargs: Any) -> ErrorReply:
    message = "The server had an error while processing your request. Sorry about that!"
    if status == 503:
        message = "The engine is currently overloaded, please try again later."
    return ErrorReply(status, message, "server_error", **kwargs)


def model_not_found(model: str) -> ErrorReply:
    return ErrorReply(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        code="model_not_found",
    )


def context_length_exceeded() -> ErrorReply:
    return ErrorReply(
        400,
        "This model's maximum context length is 128000 tokens. However, your messages "
        "resulted in 130512 tokens. Please reduce the length of the messages.",
        "invalid_request_error",
        code="context_length_exceeded",
        param="messages",
    )


def content_policy(code: str | None = "content_policy_violation") -> ErrorReply:
    return ErrorReply(
        400,
        "Your request was rejected as a result of our safety system.",
        "invalid_request_error",
        code=code,
    )


def invalid_request(message: str = "Invalid value for 'temperature'.") -> ErrorReply:
    return ErrorReply(400, message, "invalid_request_error", param="temperature")


def unsupported_value(param: str, value: object) -> ErrorReply:
    """What OpenAI answers to e.g. temperature=0.3 on gpt-5 models."""
    return ErrorReply(
        400,
        f"Unsupported value: '{param}' does not support {value} with this model. Only the "
        "default (1) value is supported.",
        "invalid_request_error",
        code="unsupported_value",
        param=param,
    )


def unsupported_parameter(param: str, instead: str | None = None) -> ErrorReply:
    hint = f" Use '{instead}' instead." if instead else ""
    return ErrorReply(
        400,
        f"Unsupported parameter: '{param}' is not supported with this model.{hint}",
        "invalid_request_error",
        code="unsupported_parameter",
        param=param,
    )


def llama_cpp_validation_error() -> ErrorReply:
    """llama-cpp-python's server (0.3.16) on `response_format: json_schema`: FastAPI's request
    validation error wrapped as a 500, with the server's file path and line in the message."""
    return ErrorReply(
        500,
        "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', "
        "'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', "
        "'ctx': {'expected': \"'text' or 'json_object'\"}}\n\n  File "
        '"/srv/venv/lib/python3.11/site-packages/llama_cpp/server/app.py", line 494, in '
        "create_chat_completion\n    POST /v1/chat/completions",
        "internal_server_error",
    )


def invalid_api_key() -> ErrorReply:
    return ErrorReply(
        401,
        "Incorrect API key provided: sk-wrong. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        code="invalid_api_key",
    )


# --------------------------------------------------------------------------- OpenAI's refusals

REASONING_FAMILIES = ("gpt-5", "o1", "o3", "o4")
NO_STRUCTURED_OUTPUTS = ("gpt-3.5-turbo", "gpt-4-turbo", "gpt-4-0613", "gpt-4-32k")


def openai_refusal(body: Mapping[str, Any]) -> ErrorReply | None:
    """The 400 OpenAI's API answers to this body, or None when it accepts it."""
    model = str(body.get("model", "")).lower()
    reasoning = model.startswith(REASONING_FAMILIES)
    if reasoning and "max_tokens" in body:
        return unsupported_parameter("max_tokens", "max_completion_tokens")
    temperature = body.get("temperature")
    if reasoning and temperature is not None and temperature != 1:
        return unsupported_value("temperature", temperature)
    if reasoning and body.get("top_p") not in (None, 1):
        return unsupported_value("top_p", body["top_p"])
    if reasoning and body.get("stop") is not None:
        return unsupported_parameter("stop")
    if body.get("stream_options") is not None and not body.get("stream"):
        return ErrorReply(400, "The 'stream_options' parameter is only allowed when 'stream' "
                          "is enabled.", "invalid_request_error", param="stream_options")
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        if model.startswith(NO_STRUCTURED_OUTPUTS) or model == "gpt-4":
            return ErrorReply(400, "Invalid parameter: 'response_format' of type 'json_schema' "
                              "is not supported with this model.", "invalid_request_error",
                              param="response_format")
        spec = fmt.get("json_schema") or {}
        if spec.get("strict"):
            problem = _not_strict(spec.get("schema") or {}, "()")
            if problem is not None:
                return ErrorReply(400, f"Invalid schema for response_format "
                                  f"'{spec.get('name')}': {problem}", "invalid_request_error",
                                  param="response_format")
    if fmt.get("type") == "json_object":
        said = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        if "json" not in said.lower():
            return ErrorReply(400, "'messages' must contain the word 'json' in some form, to "
                              "use 'response_format' of type 'json_object'.",
                              "invalid_request_error", param="messages")
    return None


def _not_strict(node: Any, where: str) -> str | None:
    """Why OpenAI's strict mode refuses this schema node (every object: all properties
    required, additionalProperties false)."""
    if isinstance(node, list):
        return next((p for p in (_not_strict(n, where) for n in node) if p), None)
    if not isinstance(node, dict):
        return None
    props = node.get("properties")
    if isinstance(props, dict):
        missing = [key for key in props if key not in node.get("required", [])]
        if missing:
            return (f"In context={where}, 'required' is required to be supplied and to be an "
                    f"array including every key in properties. Missing '{missing[0]}'.")
        if node.get("additionalProperties") is not False:
            return (f"In context={where}, 'additionalProperties' is required to be supplied "
                    "and to be false.")
        for key, sub in props.items():
            found = _not_strict(sub, f"('properties', '{key}')")
            if found:
                return found
    for key, value in node.items():
        if key != "properties" and isinstance(value, dict | list):
            children = value.values() if key == "$defs" and isinstance(value, dict) else [value]
            for child in children:
                found = _not_strict(child, where)
                if found:
                    return found
    return None


# --------------------------------------------------------------------------- schema samples


def sample_for_schema(schema: Mapping[str, Any]) -> Any:
    """A deterministic instance of a JSON Schema as pydantic v2 emits it."""
    return _sample(schema, schema.get("$defs", {}), "value", 0)


def _sample(schema: Mapping[str, Any], defs: Mapping[str, Any], name: str, depth: int) -> Any:
    if depth > 32:
        raise ValueError("schema too deep (recursive $ref without an exit?)")
    if "$ref" in schema:
        ref = str(schema["$ref"])
        return _sample(defs[ref.rsplit("/", 1)[-1]], defs, name, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            branches = [b for b in schema[key] if b.get("type") != "null"] or schema[key]
            return _sample(branches[0], defs, name, depth + 1)
    if "allOf" in schema:
        return _sample(schema["allOf"][0], defs, name, depth + 1)
    return _sample_typed(schema, defs, name, depth)


def _sample_typed(schema: Mapping[str, Any], defs: Mapping[str, Any], name: str, depth: int) -> Any:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and "properties" in schema:
        kind = "object"
    if kind == "object":
        props: Mapping[str, Any] = schema.get("properties", {})
        return {key: _sample(sub, defs, key, depth + 1) for key, sub in props.items()}
    if kind == "array":
        low = int(schema.get("minItems", 0))
        high = int(schema.get("maxItems", max(low, 2)))
        items: Mapping[str, Any] = schema.get("items", {})
        count = max(low, min(2, high))
        return [_sample(items, defs, f"{name} {i + 1}", depth + 1) for i in range(count)]
    if kind == "string":
        return _string(name, int(schema.get("minLength", 0)), schema.get("maxLength"))
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return schema.get("default", name)  # unconstrained: any JSON value is valid


def _string(name: str, min_length: int, max_length: int | None) -> str:
    text = f"Sample {name.replace('_', ' ')}"
    while len(text) < min_length:
        text += " lorem ipsum"
    return text if max_length is None else text[: int(max_length)]


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if low is not None and high is not None:
        value = (float(low) + float(high)) / 2
    elif low is not None:
        value = float(low) + 1
    elif high is not None:
        value = float(high) - 1
    else:
        value = 1.0
    return math.floor(value) if integer else value


# --------------------------------------------------------------------------- the server


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]
    received_at: float = field(default_factory=time.monotonic)


def _count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


class FakeOpenAI:
    """`async with FakeOpenAI() as server:` a live OpenAI-compatible API at `server.base_url`."""

    def __init__(self, *, api_key: str = DEFAULT_API_KEY, refuse_like_openai: bool = True) -> None:
        self.api_key = api_key
        self.refuse_like_openai = refuse_like_openai
        self.requests: list[RecordedRequest] = []
        self.calls_by_model: Counter[str] = Counter()
        self._script: deque[Scripted] = deque()
        # Asked (with the request body) once the script is empty; None: the default responder.
        self.responder: Responder | None = None
        self._closing = asyncio.Event()
        self.files: dict[str, FakeFile] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_ending = "completed"  # completed | failed | expired | hold
        self.upload_errors: deque[ErrorReply] = deque()  # served to the next file uploads
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # -- knobs

    def script(self, *responses: Scripted) -> None:
        """Queue responses, served in order before the default responder takes over."""
        self._script.extend(responses)

    @property
    def pending(self) -> int:
        return len(self._script)

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeOpenAI is not running")
        return f"http://127.0.0.1:{self._port}/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    # -- lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{file_id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._create_batch)
        app.router.add_get("/v1/batches/{batch_id}", self._retrieve_batch)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self._cancel_batch)
        app.router.add_route("*", "/{tail:.*}", self._unknown_route)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- handlers

    async def _record(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"_raw": raw.decode(errors="replace")}
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(RecordedRequest(request.method, request.path, headers, body))
        return body if isinstance(body, dict) else {"_raw": body}

    async def _unknown_route(self, request: web.Request) -> web.Response:
        await self._record(request)
        error = ErrorReply(
            404, f"Invalid URL ({request.method} {request.path})", "invalid_request_error"
        )
        return self._error_response(error)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        model = str(body.get("model", ""))
        self.calls_by_model[model] += 1
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error_response(invalid_api_key())
        refused = openai_refusal(body) if self.refuse_like_openai else None
        if refused is not None:  # refused before anything scripted is served, as OpenAI does
            return self._error_response(refused)
        entry = self._script.popleft() if self._script else self._respond(body)
        if entry.delay_s > 0:
            await self._sleep(entry.delay_s)
        if isinstance(entry, ErrorReply):
            return self._error_response(entry)
        content = entry.content if entry.content is not None else self._default_content(body)
        if body.get("stream"):
            return await self._stream(request, body, model, content, entry)
        return web.json_response(self._completion(body, model, content, entry),
                                 headers=self._headers(entry.headers))

    def _completion(self, body: dict[str, Any], model: str, content: str,
                    entry: Reply) -> dict[str, Any]:
        completion = {
            "id": _new_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": entry.finish_reason,
                }
            ],
            "system_fingerprint": "fp_fake",
        }
        if entry.include_usage:
            completion["usage"] = self._usage(body, content, entry)
        return completion

    async def _stream(
        self, request: web.Request, body: dict[str, Any], model: str, content: str, entry: Reply
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers=self._headers({"Content-Type": "text/event-stream", **entry.headers})
        )
        await response.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": _new_id("chatcmpl"),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        events: list[dict[str, Any]] = []

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            extra = {"usage": None} if include_usage else {}
            return {**base, "choices": [choice], **extra}

        events.append(chunk({"role": "assistant", "content": "", "refusal": None}))
        events.extend(chunk({"content": piece}) for piece in _split(content, entry.chunk_count))
        if not entry.interrupted:
            events.append(chunk({}, entry.finish_reason))
        if include_usage and entry.include_usage and not entry.interrupted:
            events.append({**base, "choices": [], "usage": self._usage(body, content, entry)})
        for sent, event in enumerate(events):
            if entry.break_after_chunks is not None and sent >= entry.break_after_chunks:
                assert request.transport is not None
                request.transport.close()  # drop the connection mid-body
                return response
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # -- the Batch API

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _upload(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error_response(invalid_api_key())
        form = await request.post()
        upload, purpose = form.get("file"), str(form.get("purpose") or "")
        self.requests.append(RecordedRequest(request.method, request.path,
                                             {k.lower(): v for k, v in request.headers.items()},
                                             {"purpose": purpose}))
        if self.upload_errors:
            return self._error_response(self.upload_errors.popleft())
        if not isinstance(upload, web.FileField) or purpose not in ("batch", "assistants",
                                                                   "fine-tune", "vision",
                                                                   "user_data", "evals"):
            return self._error_response(invalid_request("'file' and a valid 'purpose' are "
                                                        "required"))
        file = FakeFile(_new_id("file"), upload.filename, purpose, upload.file.read())
        self.files[file.id] = file
        return web.json_response(file.object())

    async def _file_content(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self._authorized(request):
            return self._error_response(invalid_api_key())
        file = self.files.get(request.match_info["file_id"])
        if file is None:
            return self._error_response(ErrorReply(404, "No such File object",
                                                   "invalid_request_error"))
        return web.Response(body=file.content, content_type="application/octet-stream")

    async def _create_batch(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if not self._authorized(request):
            return self._error_response(invalid_api_key())
        file = self.files.get(str(body.get("input_file_id")))
        if file is None or file.purpose != "batch":
            return self._error_response(invalid_request("input_file_id must name a file "
                                                        "uploaded with purpose 'batch'"))
        if body.get("endpoint") not in ("/v1/chat/completions", "/v1/responses",
                                        "/v1/embeddings", "/v1/completions"):
            return self._error_response(invalid_request("unsupported endpoint"))
        if body.get("completion_window") != "24h":
            return self._error_response(invalid_request("completion_window must be '24h'"))
        now = int(time.time())
        batch: dict[str, Any] = {
            "id": _new_id("batch"), "object": "batch", "endpoint": body["endpoint"],
            "errors": None, "input_file_id": file.id, "completion_window": "24h",
            "status": "validating", "output_file_id": None, "error_file_id": None,
            "created_at": now, "in_progress_at": None, "expires_at": now + 86_400,
            "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
            "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        self.batches[batch["id"]] = batch
        return web.json_response(batch)

    async def _batch_of(self, request: web.Request) -> dict[str, Any] | web.Response:
        """The batch the path names, or the API's error answer (bad key, no such batch)."""
        await self._record(request)
        if not self._authorized(request):
            return self._error_response(invalid_api_key())
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return self._error_response(ErrorReply(404, "No such Batch object",
                                                   "invalid_request_error"))
        return batch

    async def _retrieve_batch(self, request: web.Request) -> web.Response:
        batch = await self._batch_of(request)
        if isinstance(batch, web.Response):
            return batch
        self._advance(batch)
        return web.json_response(batch)

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        batch = await self._batch_of(request)
        if isinstance(batch, web.Response):
            return batch
        if batch["status"] in ("validating", "in_progress", "finalizing"):
            batch["status"], batch["cancelling_at"] = "cancelling", int(time.time())
        return web.json_response(batch)

    def _advance(self, batch: dict[str, Any]) -> None:
        """One step of the batch's life per look (never past `batch_ending`)."""
        now, status = int(time.time()), batch["status"]
        lines = self._input_lines(batch)
        if status == "cancelling":
            self._end(batch, "cancelled", lines, ran=False)
        elif status == "validating":
            problem = self._invalid(lines)
            if problem is not None or self.batch_ending == "failed":
                batch["status"], batch["failed_at"] = "failed", now
                batch["errors"] = {"object": "list", "data": [{
                    "code": "invalid_request", "line": 1, "param": None,
                    "message": problem or "the input file was refused"}]}
                return
            batch["status"], batch["in_progress_at"] = "in_progress", now
            batch["request_counts"]["total"] = len(lines)
        elif status == "in_progress" and self.batch_ending == "expired":
            self._end(batch, "expired", lines, ran=False)
        elif status == "in_progress" and self.batch_ending != "hold":
            batch["status"], batch["finalizing_at"] = "finalizing", now
        elif status == "finalizing":
            self._end(batch, "completed", lines, ran=True)

    def _input_lines(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        content = self.files[batch["input_file_id"]].content
        return [json.loads(raw) for raw in content.splitlines() if raw.strip()]

    @staticmethod
    def _invalid(lines: list[dict[str, Any]]) -> str | None:
        """What the real API refuses in an input file, as far as the service can get it wrong."""
        ids = [line.get("custom_id") for line in lines]
        if not lines:
            return "the input file is empty"
        if len(set(ids)) != len(ids) or not all(isinstance(i, str) for i in ids):
            return "custom_id must be a unique string per line"
        if any(line.get("method") != "POST" or line.get("url") != "/v1/chat/completions"
               for line in lines):
            return "every line must POST to the batch's endpoint"
        if len({line.get("body", {}).get("model") for line in lines}) != 1:
            return "every line of a batch must use the same model"
        return None

    def _end(self, batch: dict[str, Any], status: str, lines: list[dict[str, Any]], *,
             ran: bool) -> None:
        outputs, errors = [], []
        for line in lines:
            custom_id, body = line["custom_id"], line["body"]
            if not ran:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                errors.append({"id": _new_id("batch_req"), "custom_id": custom_id,
                               "response": None, "error": {
                                   "code": code, "message": f"request not run: batch {status}"}})
                continue
            status_code, answer = self._batch_call(body)
            row = {"id": _new_id("batch_req"), "custom_id": custom_id, "error": None,
                   "response": {"status_code": status_code, "request_id": _new_id("req"),
                                "body": answer}}
            (outputs if status_code == 200 else errors).append(row)
        batch["status"], batch[f"{status}_at"] = status, int(time.time())
        batch["request_counts"] = {"total": len(lines), "completed": len(outputs),
                                   "failed": len(errors)}
        for rows, name in ((outputs, "output_file_id"), (errors, "error_file_id")):
            if rows:
                file = FakeFile(_new_id("file"), f"{batch['id']}_{name}.jsonl",
                                "batch_output", b"".join(json.dumps(r).encode() + b"\n"
                                                         for r in rows))
                self.files[file.id] = file
                batch[name] = file.id

    def _batch_call(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One line, answered as a realtime call would be."""
        model = str(body.get("model", ""))
        self.calls_by_model[model] += 1
        refused = openai_refusal(body) if self.refuse_like_openai else None
        entry = refused or (self._script.popleft() if self._script else self._respond(body))
        if isinstance(entry, ErrorReply):
            return entry.status, entry.body()
        content = entry.content if entry.content is not None else self._default_content(body)
        return 200, self._completion(body, model, content, entry)

    # -- helpers

    def _respond(self, body: dict[str, Any]) -> Scripted:
        found = self.responder(body) if self.responder is not None else None
        return found if found is not None else Reply()

    async def _sleep(self, delay_s: float) -> None:
        """Wait `delay_s`, or less when the server is shutting down (so a hang never blocks)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=delay_s)

    def _default_content(self, body: Mapping[str, Any]) -> str:
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") or {}
            return json.dumps(sample_for_schema(schema))
        if fmt.get("type") == "json_object" and isinstance(fmt.get("schema"), dict):
            return json.dumps(sample_for_schema(fmt["schema"]))
        if fmt.get("type") == "json_object":
            return json.dumps({"answer": DEFAULT_TEXT})
        return DEFAULT_TEXT

    def _usage(self, body: Mapping[str, Any], content: str, entry: Reply) -> dict[str, int]:
        if entry.usage is not None:
            usage = dict(entry.usage)
            usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
            return usage
        prompt_text = "".join(str(m.get("content", "")) for m in body.get("messages", []))
        prompt, completion = _count_tokens(prompt_text), _count_tokens(content)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _headers(self, extra: Mapping[str, str]) -> dict[str, str]:
        return {"x-request-id": _new_id("req"), "openai-processing-ms": "7", **extra}

    def _error_response(self, error: ErrorReply) -> web.Response:
        return web.json_response(
            error.body(), status=error.status, headers=self._headers(error.headers)
        )


@dataclass(frozen=True, slots=True)
class FakeFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def object(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.content),
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": "processed"}


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _split(text: str, parts: int) -> list[str]:
    if not text:
        return []
    size = max(1, math.ceil(len(text) / max(1, parts)))
    return [text[i : i + size] for i in range(0, len(text), size)]
