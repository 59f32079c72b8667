"""Response cache: a request whose canonical form was answered before gets the stored result.

The key is the sha256 of the canonical JSON (sorted keys) of the request type, kind, context,
theme, the resolved model and its parameters, and any other field that shapes the answer;
`cache`, `user_id` and `stream` do not, so they are left out. Text answers are shared across
users: the same input gives the same output, which the asker already holds. Image answers are
not: they point at stored images, which only their owner may read (`owner` joins the key).

Invalidation bumps a generation counter (all kinds, or one); every entry carries the generation
it was computed under, and the lookup (in `lookup.lua`) ignores older ones. That makes
invalidation instant on every replica, also for answers still being computed when it happened.
The old entries are then unlinked (SCAN + UNLINK) to give the memory back.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel

from llm_consumer.store.client import RedisClient
from llm_consumer.store.keys import Keys

CACHE_FORMAT = 1  # bump when the stored form or the key's canonical form changes
NOT_IN_KEY = frozenset({"cache", "user_id", "stream"})
HANDOFF_TTL_S = 5  # kinds with caching off still hand the answer to single-flight followers
SCAN_BATCH = 500
INVALIDATION_MARK_S = 3600

Stored = list[tuple[str, dict[str, Any]]]  # (event type, event data) per reply


def canonical(request_type: str, data: BaseModel, model: str, owner: str = "") -> bytes:
    body = data.model_dump(mode="json", exclude=set(NOT_IN_KEY), exclude_none=True)
    options = body.get("model")
    if isinstance(options, dict):  # the resolved name stands in for an explicit or default one
        options.pop("name", None)
        if not options:
            del body["model"]
    body.update(format=CACHE_FORMAT, type=request_type, resolved_model=model)
    if owner:
        body["owner"] = owner
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def digest(request_type: str, data: BaseModel, model: str, owner: str = "") -> str:
    return hashlib.sha256(canonical(request_type, data, model, owner)).hexdigest()


def encode(replies: Stored) -> bytes:
    return orjson.dumps([{"type": t, "data": d} for t, d in replies])


def decode(stored: bytes) -> Stored:
    return [(item["type"], item["data"]) for item in orjson.loads(stored)]


class ResponseCache:
    def __init__(self, redis: RedisClient, keys: Keys, *, default_ttl_s: int,
                 ttls: Mapping[str, int]) -> None:
        self._redis = redis
        self._keys = keys
        self._default_ttl_s = default_ttl_s
        self._ttls = dict(ttls)

    def ttl_for(self, kind: str) -> int:
        """Seconds an answer of `kind` is kept; 0: not cached."""
        return self._ttls.get(kind, self._default_ttl_s)

    async def invalidate(self, kind: str | None = None, *, event_id: str | None = None,
                         ) -> int | None:
        """Drop cached answers (all, or of one kind); the count unlinked, or None when this
        `cache.invalidate` event was already handled by a peer replica."""
        if event_id is not None and not await self._redis.set(
                self._keys.cache_invalidated_by(event_id), "1", nx=True, ex=INVALIDATION_MARK_S):
            return None
        await self._redis.hincrby(self._keys.cache_generations(), kind or "*", 1)
        removed = 0
        batch: list[bytes] = []
        async for key in self._redis.scan_iter(match=self._keys.cache_pattern(kind),
                                               count=SCAN_BATCH):
            batch.append(key)
            if len(batch) >= SCAN_BATCH:
                removed += await self._redis.unlink(*batch)
                batch = []
        if batch:
            removed += await self._redis.unlink(*batch)
        return removed

    async def stats(self) -> tuple[Counter[str], dict[str, int]]:
        """(entries per kind, generation per kind with '*' for all)."""
        prefix = len(self._keys.cache_pattern()) - 3
        entries: Counter[str] = Counter()
        async for key in self._redis.scan_iter(match=self._keys.cache_pattern(),
                                               count=SCAN_BATCH):
            name = key.decode() if isinstance(key, bytes) else str(key)
            entries[name[prefix:].rsplit(":", 1)[0]] += 1
        raw = await self._redis.hgetall(self._keys.cache_generations())
        return entries, {(k.decode() if isinstance(k, bytes) else str(k)): int(v)
                         for k, v in raw.items()}
