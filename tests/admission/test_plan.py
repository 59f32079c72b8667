"""What the pipeline decides before asking Redis: operation, user, model and token estimate."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llm_consumer.admission.plan import (
    PROMPT_OVERHEAD_TOKENS,
    estimate_tokens,
    model_of,
    operation_of,
    user_of,
)
from llm_consumer.auth import Principal
from llm_consumer.client import build_request, request_type_for
from llm_consumer.events.catalog import EVENTS
from llm_consumer.events.envelope import Envelope
from llm_consumer.events.requests import ContentKind, ContentRequested, ImageKind
from llm_consumer.handlers.base import Request
from llm_consumer.prompts.tokens import counter_for, estimate


def request(kind: str, data: dict[str, Any], *scopes: str, subject: str = "alice") -> Request:
    envelope = Envelope.model_validate(build_request(kind, data))
    parsed = EVENTS[request_type_for(kind)].model.model_validate(envelope.data)

    async def emit(event_type: str, data: Any) -> None: ...

    return Request(envelope=envelope, data=parsed,  # type: ignore[arg-type]
                   principal=Principal(subject, frozenset(scopes)), attempt=0, emit=emit)


@pytest.mark.parametrize(("kind", "operation"), [
    *((k.value, "text") for k in ContentKind if k.value.split(".")[0] in (
        "character", "campaign", "world")),
    ("theme.apply", "theme"), ("theme.analyze", "theme"), ("content.validate", "validation"),
    *((k.value, "image_text_to_image") for k in (ImageKind.PORTRAIT, ImageKind.LOCATION,
                                                  ImageKind.ITEM)),
    *((k.value, "image_to_image") for k in (ImageKind.TRANSFORM, ImageKind.ENHANCE,
                                             ImageKind.VARIATIONS)),
])
def test_every_kind_counts_against_one_operation(kind: str, operation: str) -> None:
    data: dict[str, Any] = {"context": {"text": "x"}, "prompt": "a dwarf",
                            "source_image": {"url": "https://images.example/a.png"}}
    assert operation_of(request(kind, data).data) == operation


def test_user_is_the_subject_unless_an_admin_names_one() -> None:
    data = {"context": {"name": "Mira"}, "user_id": "bob"}
    assert user_of(request("world.location", data, "llm:content")) == "alice"
    assert user_of(request("world.location", data, "llm:content", "llm:admin")) == "bob"
    assert user_of(request("world.location", {"context": {}}, "llm:admin")) == "alice"


def test_model_and_token_estimate() -> None:
    small = ContentRequested.model_validate({"kind": "world.location",
                                             "context": {"name": "x" * 400}})
    assert model_of(small, "gpt-5-nano") == "gpt-5-nano"
    named = ContentRequested.model_validate({**small.model_dump(),
                                             "model": {"name": "gpt-5-mini"}})
    assert model_of(named, "gpt-5-nano") == "gpt-5-mini"
    prompt = estimate_tokens(small) - PROMPT_OVERHEAD_TOKENS - 800  # the kind's answer: 800
    assert prompt == estimate(orjson.dumps(small.context).decode()), "the one estimator"
    huge = small.model_copy(update={"context": {"text": "y" * 400_000}})
    assert estimate_tokens(huge, window=8192) == 8192, "cut to the window before it is sent"


@pytest.mark.parametrize("context", [
    {"stats": list(range(1000, 1400))},                    # digits: chars / 4 undercounts
    {"name": "Ærwyn Þórsdóttir", "home": "東京の森" * 40},  # non-Latin
    {"story": "The ranger walked into the misty vale. " * 30},
])
def test_the_admission_estimate_covers_the_real_tokens(context: dict[str, object]) -> None:
    """Admission charges the rate limits before the prompt exists: its estimate of the caller's
    data stays above what OpenAI's tokenizer counts for it."""
    data = ContentRequested.model_validate({"kind": "world.location", "context": context})
    charged = estimate_tokens(data) - PROMPT_OVERHEAD_TOKENS - 800
    assert charged >= counter_for("gpt-5-nano").count(orjson.dumps(context).decode())
