"""Independent Redis calls of one request step, sent together.

A step that needs several calls on different hash tags (the job claim beside the cache
generations; the answer's store, the ledger record and the usage count) ran them concurrently,
each with its own connection checkout, socket write and read. On a standalone server (or the
master found through Sentinel) they now go as one pipeline without MULTI: one write, one round
trip, the same commands. A Redis Cluster may hold the tags on different nodes, so there the
calls still run concurrently, each routed on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from llm_consumer.store.client import RedisClient

Arg = str | int | float | bytes


@dataclass(frozen=True, slots=True)
class Call:
    """One command: how to queue it on a pipeline, and how to run it alone."""

    queue: Callable[[Pipeline], object]
    alone: Callable[[], Awaitable[Any]]


def script_call(script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]) -> Call:
    """An EVALSHA; run alone (after a NOSCRIPT: a restarted or flushed server) it loads the
    script first."""
    return Call(lambda pipe: pipe.evalsha(script.sha, len(keys), *keys, *args),
                lambda: script(keys=list(keys), args=list(args)))


async def together(redis: RedisClient, calls: Sequence[Call]) -> list[Any]:
    """Each call's answer, or the RedisError it raised, in order (never raises RedisError)."""
    if isinstance(redis, RedisCluster) or len(calls) < 2:
        return await asyncio.gather(*(call.alone() for call in calls), return_exceptions=True)
    pipe = redis.pipeline(transaction=False)
    for call in calls:
        call.queue(pipe)
    try:
        results: list[Any] = await pipe.execute(raise_on_error=False)
    except RedisError as error:  # the connection failed: no answer for any of them
        return [error] * len(calls)
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:  # only these did not run: run them alone, which loads their scripts
        again = await asyncio.gather(*(calls[i].alone() for i in missing),
                                     return_exceptions=True)
        for index, result in zip(missing, again, strict=True):
            results[index] = result
    return results
