"""What the admission asks before a request runs: its operation, user, model, token estimate,
rate-limit scopes, cache digest and lifetime. Pure: no Redis, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from llm_consumer.events.requests import TEXT_TO_IMAGE_KINDS, ContentRequested, ImageRequested
from llm_consumer.handlers.base import Deps, Request
from llm_consumer.images.service import ImageService
from llm_consumer.prompts.builder import kind_templates
from llm_consumer.prompts.tokens import MESSAGE_OVERHEAD_TOKENS, estimate
from llm_consumer.providers.base import TextProvider
from llm_consumer.store import cache
from llm_consumer.store.admission import Ask
from llm_consumer.store.guard import Guard
from llm_consumer.store.ratelimit import request_scopes

ADMIN = "llm:admin"
PROMPT_OVERHEAD_TOKENS = 300  # system message, instruction and schema around the context
OPERATIONS = {"theme.apply": "theme", "theme.analyze": "theme",
              "content.validate": "validation"}


def operation_of(data: ContentRequested | ImageRequested) -> str:
    if isinstance(data, ImageRequested):
        return ("image_text_to_image" if data.kind in TEXT_TO_IMAGE_KINDS
                else "image_to_image")
    return OPERATIONS.get(data.kind.value, "text")


def user_of(request: Request) -> str:
    """`data.user_id` when an admin asks on a user's behalf, else the token's subject."""
    user_id = request.data.user_id
    return user_id if user_id and request.principal.allows(ADMIN) else request.principal.subject


def model_of(data: ContentRequested | ImageRequested, default_model: str,
             text: TextProvider | None = None, images: ImageService | None = None) -> str:
    """The model the request will use: as the text provider resolves it when there is one; an
    image request's named model, else its provider's default model (GetImg's quotas are per
    model)."""
    if isinstance(data, ImageRequested):
        if images is not None:
            return images.model_for(data.options.provider, data.options.model)
        return data.options.model or data.options.provider or "image"
    named = data.model.name if data.model and data.model.name else None
    if text is not None:
        return text.models_for(named)[0]
    return named or default_model


def estimate_tokens(data: ContentRequested | ImageRequested, window: int | None = None) -> int:
    """Prompt + answer budget, estimated before the prompt exists (the calibrated estimate of
    the context, the theme and the chat turns, plus a fixed overhead; the answer budget in
    full), at most the model's context window (a bigger context is cut to fit it)."""
    if isinstance(data, ImageRequested):
        return 1
    theme = data.theme.model_dump(exclude_none=True) if data.theme else {}
    prompt = (estimate(orjson.dumps(data.context).decode())
              + (estimate(orjson.dumps(theme).decode()) if theme else 0)
              + sum(estimate(turn.content) + MESSAGE_OVERHEAD_TOKENS
                    for turn in data.messages or ()))
    answer = (data.model.max_tokens if data.model and data.model.max_tokens
              else kind_templates()[data.kind.value].max_tokens)
    tokens = prompt + PROMPT_OVERHEAD_TOKENS + answer
    return min(tokens, window) if window else tokens


@dataclass(frozen=True, slots=True)
class Plan:
    ask: Ask
    model: str
    user: str
    ttl_s: int


def plan_for(request: Request, guard: Guard, deps: Deps) -> Plan:
    data = request.data
    kind = data.kind.value
    model = model_of(data, guard.policy.default_model, deps.text, deps.images)
    user = user_of(request)
    window = deps.windows.windows.get(model, deps.windows.default)
    scopes = request_scopes(guard.limits, operation=operation_of(data), user=user, model=model,
                            tokens=estimate_tokens(data, window))
    ttl_s = guard.cache.ttl_for(kind)
    # Image answers name stored images only their owner may read: never shared across callers.
    owner = request.principal.subject if isinstance(data, ImageRequested) else ""
    ask = Ask(kind, cache.digest(request.envelope.type, data, model, owner), tuple(scopes),
              read_cache=data.cache and ttl_s > 0, coalesce=data.cache,
              lease_s=guard.policy.singleflight_wait_s,
              job=request.key if request.claims_job else None)
    return Plan(ask, model, user, ttl_s)
