"""The cache key's canonical form, and invalidation against the real Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from llm_consumer.admission.plan import model_of
from llm_consumer.events.requests import ContentRequested, ImageRequested
from llm_consumer.store.cache import digest
from llm_consumer.store.guard import Guard
from llm_consumer.store.keys import Keys

BASE: dict[str, Any] = {"kind": "character.backstory",
                        "context": {"name": "Mira", "class": "Rogue", "level": 3},
                        "theme": {"preset": "dark-fantasy"}}


def key(data: dict[str, Any], default_model: str = "gpt-5-nano") -> str:
    request = ContentRequested.model_validate(data)
    return digest("content.requested", request, model_of(request, default_model))


def test_key_ignores_order_and_fields_that_do_not_shape_the_answer() -> None:
    reordered = {"theme": {"preset": "dark-fantasy"}, "kind": "character.backstory",
                 "context": {"level": 3, "class": "Rogue", "name": "Mira"}}
    assert key(reordered) == key(BASE)
    for extra in ({"cache": False}, {"user_id": "u1"}, {"stream": True},
                  {"model": {"name": "gpt-5-nano"}}):
        assert key({**BASE, **extra}) == key(BASE), extra


@pytest.mark.parametrize("change", [
    {"kind": "world.location"},
    {"context": {"name": "Mira", "class": "Rogue", "level": 4}},
    {"theme": {"preset": "gothic-horror"}},
    {"theme": {"preset": "dark-fantasy", "tone": "bleak"}},
    {"model": {"name": "gpt-5-mini"}},
    {"model": {"temperature": 0.2}},
    {"model": {"max_tokens": 500}},
])
def test_key_changes_with_what_shapes_the_answer(change: dict[str, Any]) -> None:
    assert key({**BASE, **change}) != key(BASE)


def test_key_follows_the_resolved_model_and_request_type() -> None:
    assert key(BASE, default_model="gpt-5-mini") != key(BASE)
    image = ImageRequested.model_validate({"kind": "portrait", "prompt": "a dwarf"})
    other = ImageRequested.model_validate({"kind": "portrait", "prompt": "a dwarf",
                                           "options": {"seed": 7}})
    assert digest("image.requested", image, "x") != digest("image.requested", other, "x")


async def test_invalidate_drops_entries_once_per_event(guard_factory: Callable[..., Guard],
                                                       redis: aioredis.Redis, keys: Keys) -> None:
    guard = guard_factory()
    for kind, n in (("world.location", 3), ("character.backstory", 2)):
        for i in range(n):
            await redis.hset(keys.cache_entry(kind, f"d{i}"), mapping={"g": "0.0", "v": "[]"})
    entries, generations = await guard.cache.stats()
    assert entries == {"world.location": 3, "character.backstory": 2} and generations == {}
    assert await guard.invalidate("world.location", event_id="e1") == 3
    assert await guard.invalidate("world.location", event_id="e1") is None, "a peer did it"
    entries, generations = await guard.cache.stats()
    assert entries == {"character.backstory": 2} and generations == {"world.location": 1}
    assert await guard.invalidate() == 2
    assert (await guard.cache.stats())[1] == {"world.location": 1, "*": 1}
