"""The deployment's shared book of provider capabilities (providers/capabilities.SharedBook).

One small key per (base URL, model, pinned settings), named by the scope's SHA-256 (a model name
can come from a caller: it never becomes part of a key), kept CAPABILITIES_TTL_S so that a
server that changed is asked again at least daily. The book is an optimisation: a Redis error
reads as "nothing known" and a failed write is forgotten, never a failed generation.
"""

from __future__ import annotations

import hashlib

import structlog
from redis.exceptions import RedisError

from llm_consumer.store.client import RedisClient
from llm_consumer.store.keys import Keys

log = structlog.get_logger(__name__)

CAPABILITIES_TTL_S = 86_400
MAX_VALUE_BYTES = 1_024  # what encode() writes is ~150 bytes


class RedisCapabilities:
    def __init__(self, redis: RedisClient, keys: Keys, *,
                 ttl_s: int = CAPABILITIES_TTL_S) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s

    def key(self, scope: str) -> str:
        return self._keys.capabilities(hashlib.sha256(scope.encode()).hexdigest())

    async def load(self, scope: str) -> bytes | None:
        try:
            raw = await self._redis.get(self.key(scope))
        except (RedisError, OSError) as err:
            log.warning("capabilities.unreadable", error=str(err))
            return None
        if not isinstance(raw, bytes) or len(raw) > MAX_VALUE_BYTES:
            return None
        return raw

    async def save(self, scope: str, value: bytes) -> None:
        try:
            await self._redis.set(self.key(scope), value, ex=self._ttl_s)
        except (RedisError, OSError) as err:
            log.warning("capabilities.unsaved", error=str(err))
