"""What an OpenAI-compatible server accepts, learnt from its refusals and remembered.

Servers in the wild differ from OpenAI's API: llama-cpp-python's server refuses
`response_format: json_schema` (it takes `json_object` with a `schema` key) and ignores
`max_completion_tokens`; OpenAI's reasoning models refuse `max_tokens` and a non-default
`temperature`; older OpenAI models have no `json_schema`. In `auto` the provider starts from the
best guess and steps down one rung when a refusal names what it refused: each step costs at most
one failed call, and the answer is remembered in this process per (base URL, model), so later
calls pay nothing. Until a model's capabilities have served one call, calls to it go one at a
time, so a burst of concurrent requests does not pay the same failed call many times over; but
each waits PROBE_WAIT_S at most. A server refuses a phrasing when it validates the request,
before it generates anything, so a probe still running after that long has been taken: the
rest need not wait for its answer (seconds, at an LLM's pace: a fresh worker under load held
every request for one whole answer). Settings pin a choice (no detection then).

What one process proves is also written to a `SharedBook` (Redis, `store/capabilities.py`) and
read by every process before its first call to a model: a restarted or added worker starts from
what the deployment already knows, with no probe and no wait (under load a probe held every
request of a fresh worker for up to PROBE_WAIT_S). A stale shared entry costs what a wrong
guess costs: one refusal, then the book adapts and writes the new answer back.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol, get_args

import orjson
import structlog

log = structlog.get_logger(__name__)

StructuredMode = Literal["json_schema", "json_object_schema", "json_object", "text"]
TokenParam = Literal["max_completion_tokens", "max_tokens"]
StructuredSetting = Literal["auto", "json_schema", "json_object_schema", "json_object", "text"]
TokenSetting = Literal["auto", "max_completion_tokens", "max_tokens"]
# Best first: the ladder `auto` walks down.
STRUCTURED_LADDER: tuple[StructuredMode, ...] = (
    "json_schema", "json_object_schema", "json_object", "text")
PROBE_WAIT_S = 2.0  # a refusal (HTTP 400/422) takes well under this
# Sampling parameters a model may refuse to take; dropped (with a notice) rather than failing.
DROPPABLE_PARAMS = frozenset({"temperature", "top_p", "stop"})

# OpenAI's own model families: they take `max_completion_tokens` and strict JSON schemas.
OPENAI_FAMILIES = ("gpt-5", "gpt-4o", "gpt-4.1", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss",
                   "gpt-4", "gpt-3.5", "gpt-35")
# Of those, the ones with structured outputs (`strict: true`).
STRICT_FAMILIES = ("gpt-5", "gpt-4o", "gpt-4.1", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss")


def _family(model: str) -> str:
    return model.lower().split("/")[-1]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """How to phrase a call to one model on one server."""

    structured: StructuredMode = "json_schema"
    strict: bool = False
    token_param: TokenParam = "max_completion_tokens"
    stream_options: bool = True  # False once the server refused `stream_options`
    dropped: frozenset[str] = frozenset()  # sampling parameters the model refuses


def encode(caps: Capabilities) -> bytes:
    return orjson.dumps({**asdict(caps), "dropped": sorted(caps.dropped)})


def decode(raw: bytes) -> Capabilities | None:
    """Capabilities read back from the shared book, or None when they are not ones this code
    would have written (another version's, or damaged)."""
    try:
        data: Any = orjson.loads(raw)
        caps = Capabilities(structured=data["structured"], strict=data["strict"],
                            token_param=data["token_param"],
                            stream_options=data["stream_options"],
                            dropped=frozenset(data["dropped"]))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    fits = (caps.structured in STRUCTURED_LADDER and caps.token_param in get_args(TokenParam)
            and isinstance(caps.strict, bool) and isinstance(caps.stream_options, bool)
            and caps.dropped <= DROPPABLE_PARAMS)
    return caps if fits else None


class SharedBook(Protocol):
    """Capabilities proven by any process of the deployment, by scope (base URL, model and
    the pinned settings). Never raises: an unreachable store reads as empty."""

    async def load(self, scope: str) -> bytes | None: ...

    async def save(self, scope: str, value: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the server refused for its content: status, message and named parameter."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None

    def mentions(self, *words: str) -> bool:
        text = f"{self.param or ''} {self.code or ''} {self.message}".lower()
        return any(word in text for word in words)

    @property
    def unsupported(self) -> bool:
        """The server does not take the parameter at all (rather than this value of it)."""
        return self.mentions(*_UNSUPPORTED_WORDS)


_UNSUPPORTED_WORDS = ("unsupported", "not supported", "unrecognized", "unknown", "extra",
                      "not permitted", "not allowed", "instead", "only the default")


def initial(model: str, *, structured: StructuredSetting = "auto",
            token_param: TokenSetting = "auto") -> Capabilities:
    """The first guess for a model: OpenAI's families get OpenAI's parameters, other models
    (served by vLLM, Ollama, llama.cpp...) the older `max_tokens` that all of those read."""
    name = _family(model)
    openai_family = name.startswith(OPENAI_FAMILIES)
    mode: StructuredMode = "json_schema" if structured == "auto" else structured
    limit: TokenParam = token_param if token_param != "auto" else (
        "max_completion_tokens" if openai_family else "max_tokens")
    return Capabilities(structured=mode, strict=name.startswith(STRICT_FAMILIES),
                        token_param=limit)


# A validator's list of what it takes: pydantic's "Input should be 'text' or 'json_object'".
_EXPECTED = re.compile(r"(?:input should be|expected:?)\s+((?:'\w+'(?:,\s*|\s+or\s+)?)+)", re.I)
_QUOTED = re.compile(r"'(\w+)'")


def _next_structured(sent: Capabilities, refusal: Refusal) -> Capabilities | None:
    """One rung down the structured-output ladder, guided by what the server said it accepts."""
    if not refusal.mentions("response_format", "json_schema", "json_object", "schema"):
        return None
    expected = _EXPECTED.search(refusal.message)
    accepted = set(_QUOTED.findall(expected.group(1))) if expected else set()
    if sent.structured == "json_schema":
        # A validator listing the types it takes ('text' or 'json_object') is llama-cpp-python's,
        # which reads a `schema` beside `json_object`; OpenAI's older models take json_object only.
        if accepted and "json_object" not in accepted:
            return replace(sent, structured="text")
        return replace(sent, structured="json_object_schema" if accepted else "json_object")
    if sent.structured == "json_object_schema":
        return replace(sent, structured="json_object")
    if sent.structured == "json_object":
        return replace(sent, structured="text")
    return None


def _next_token_param(sent: Capabilities, refusal: Refusal) -> Capabilities | None:
    if refusal.param == sent.token_param or refusal.mentions(sent.token_param):
        other: TokenParam = ("max_tokens" if sent.token_param == "max_completion_tokens"
                             else "max_completion_tokens")
        return replace(sent, token_param=other)
    return None


@dataclass
class _Entry:
    caps: Capabilities
    confirmed: bool = False  # a call with these capabilities succeeded
    consulted: bool = False  # the shared book was read for this model
    gate: asyncio.Lock = field(default_factory=asyncio.Lock)


class CapabilityBook:
    """Capabilities per model of one base URL, learnt in this process (at most one failed call
    per step) and, with a `shared` book, taken from and given to the other processes."""

    def __init__(self, base_url: str, *, structured: StructuredSetting = "auto",
                 token_param: TokenSetting = "auto", shared: SharedBook | None = None) -> None:
        self.base_url = base_url
        self.structured_setting: StructuredSetting = structured
        self.token_setting: TokenSetting = token_param
        self._shared = shared
        self._entries: dict[str, _Entry] = {}
        self.failed_calls = 0  # calls refused while learning (reported in logs and tests)
        self.shared_hits = 0  # models whose capabilities came from the shared book

    def _scope(self, model: str) -> str:
        """What shared capabilities hold for: the server, the model and the pinned settings."""
        return "\0".join((self.base_url, model, self.structured_setting, self.token_setting))

    def _entry(self, model: str) -> _Entry:
        entry = self._entries.get(model)
        if entry is None:
            entry = self._entries[model] = _Entry(initial(
                model, structured=self.structured_setting, token_param=self.token_setting))
        return entry

    def get(self, model: str) -> Capabilities:
        return self._entry(model).caps

    @asynccontextmanager
    async def probing(self, model: str) -> AsyncIterator[Capabilities]:
        """The capabilities to call `model` with; while they are unproven, one call at a time."""
        entry = self._entry(model)
        if entry.confirmed:
            yield entry.caps
            return
        try:
            await asyncio.wait_for(entry.gate.acquire(), PROBE_WAIT_S)
        except TimeoutError:  # the probe was taken (an answer is being generated): go on
            yield entry.caps
            return
        held = True
        try:
            if not entry.confirmed and not entry.consulted:
                await self._consult(model, entry)
            if entry.confirmed:  # proven (here or elsewhere): no need to go one at a time
                entry.gate.release()
                held = False
            yield entry.caps
        finally:
            if held:
                entry.gate.release()

    async def _consult(self, model: str, entry: _Entry) -> None:
        """Take what another process proved for `model`, if the shared book has it."""
        entry.consulted = True
        if self._shared is None:
            return
        raw = await self._shared.load(self._scope(model))
        caps = decode(raw) if raw is not None else None
        if caps is None:
            return
        entry.caps, entry.confirmed = caps, True
        self.shared_hits += 1
        log.info("provider.capabilities", base_url=self.base_url, model=model,
                 structured=caps.structured, strict=caps.strict, token_param=caps.token_param,
                 dropped=sorted(caps.dropped), source="shared")

    async def _share(self, model: str, caps: Capabilities) -> None:
        if self._shared is not None:
            await self._shared.save(self._scope(model), encode(caps))

    async def confirm(self, model: str, caps: Capabilities) -> None:
        entry = self._entry(model)
        if entry.caps == caps and not entry.confirmed:
            entry.confirmed = True
            log.info("provider.capabilities", base_url=self.base_url, model=model,
                     structured=caps.structured, strict=caps.strict,
                     token_param=caps.token_param, dropped=sorted(caps.dropped),
                     failed_calls=self.failed_calls, source="probe")
            await self._share(model, caps)

    def adapt(self, model: str, sent: Capabilities, refusal: Refusal,
              fields: frozenset[str]) -> Capabilities | None:
        """What to call `model` with after `refusal` of a call made with `sent` (whose body held
        `fields`), or None when nothing the book may change explains the refusal (then it is
        the caller's error)."""
        changed = self._adapted(sent, refusal, fields)
        if changed is None:
            return None
        self.failed_calls += 1
        entry = self._entry(model)
        entry.caps, entry.confirmed = changed, False
        dropped = changed.dropped - sent.dropped
        if dropped:
            log.warning("provider.parameter_dropped", model=model, params=sorted(dropped),
                        reason=refusal.message[:200])
        else:
            log.info("provider.capability_changed", base_url=self.base_url, model=model,
                     structured=changed.structured, strict=changed.strict,
                     token_param=changed.token_param, stream_options=changed.stream_options)
        return changed

    def _adapted(self, sent: Capabilities, refusal: Refusal,
                 fields: frozenset[str]) -> Capabilities | None:
        if refusal.unsupported:  # a parameter it does not take: drop it or use the other
            for param in (DROPPABLE_PARAMS & fields) - sent.dropped:
                if refusal.param == param or refusal.mentions(f"'{param}'"):
                    return replace(sent, dropped=sent.dropped | {param})
            if self.token_setting == "auto" and sent.token_param in fields:
                found = _next_token_param(sent, refusal)
                if found is not None:
                    return found
            if "stream_options" in fields and refusal.mentions("stream_options"):
                return replace(sent, stream_options=False)
        if "response_format" not in fields:  # text mode: nothing left to step down to
            return None
        if sent.structured == "json_schema" and sent.strict and refusal.mentions(
                "strict", "invalid schema"):
            return replace(sent, strict=False)
        if self.structured_setting == "auto":
            return _next_structured(sent, refusal)
        return None

    async def limit_ignored(self, model: str, sent: Capabilities) -> None:
        """The server wrote more tokens than the limit asked: it does not read that parameter."""
        if self.token_setting != "auto" or sent.token_param != "max_completion_tokens":
            return
        entry = self._entry(model)
        if entry.caps == sent:
            entry.caps = replace(sent, token_param="max_tokens")
            log.info("provider.capability_changed", base_url=self.base_url, model=model,
                     token_param="max_tokens", reason="max_completion_tokens was ignored")
            if entry.confirmed:
                await self._share(model, entry.caps)
