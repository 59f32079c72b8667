"""Capabilities one worker proves are read by the others from the real Redis: a restarted or
added worker phrases its first calls right, pays no failed call and holds no call behind a
probe. Stale, damaged or unreachable shared entries cost no more than having none."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from llm_consumer.providers import capabilities
from llm_consumer.providers.capabilities import StructuredSetting, decode
from llm_consumer.providers.openai_text import OpenAITextProvider
from llm_consumer.store.capabilities import RedisCapabilities
from llm_consumer.store.keys import Keys
from tests.conftest import REDIS_URL
from tests.fakes.openai_server import FakeOpenAI, Scripted, reply
from tests.ports import free_port
from tests.providers.test_capabilities import SAMPLE, formats, job, like_llama_cpp

Worker = Callable[..., OpenAITextProvider]


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def keys(redis: aioredis.Redis) -> AsyncIterator[Keys]:
    made = Keys(f"test-caps-{uuid.uuid4().hex[:10]}:")
    yield made
    found = [k async for k in redis.scan_iter(match=f"{made.prefix}*")]
    if found:
        await redis.delete(*found)


@pytest.fixture
async def worker(server: FakeOpenAI, redis: aioredis.Redis,
                 keys: Keys) -> AsyncIterator[Worker]:
    """A new worker process's provider each call: its own (empty) book, the shared Redis."""
    made: list[OpenAITextProvider] = []

    def make(model: str = "smollm2", structured: StructuredSetting = "auto",
             store: RedisCapabilities | None = None) -> OpenAITextProvider:
        made.append(OpenAITextProvider(
            server.api_key, base_url=server.base_url, model=model, timeout_s=5.0,
            structured_output=structured,
            shared_capabilities=store or RedisCapabilities(redis, keys)))
        return made[-1]

    yield make
    for provider in made:
        await provider.aclose()


@pytest.fixture
async def make_plain(server: FakeOpenAI) -> AsyncIterator[Callable[..., OpenAITextProvider]]:
    """A provider over any shared book."""
    made: list[OpenAITextProvider] = []

    def make(book: Any) -> OpenAITextProvider:
        made.append(OpenAITextProvider(server.api_key, base_url=server.base_url,
                                       model="smollm2", timeout_s=5.0,
                                       shared_capabilities=book))
        return made[-1]

    yield make
    for provider in made:
        await provider.aclose()


def slow_llama_cpp(delay_s: float) -> Callable[[dict[str, Any]], Scripted | None]:
    def respond(body: dict[str, Any]) -> Scripted | None:
        if (body.get("response_format") or {}).get("type") == "json_schema":
            return like_llama_cpp(body)  # refused at once
        return reply(SAMPLE, delay_s=delay_s)
    return respond


async def test_a_second_worker_starts_from_what_the_first_learnt(
    server: FakeOpenAI, worker: Worker
) -> None:
    server.responder = like_llama_cpp
    first = worker()
    await first.complete(job())
    assert formats(server) == ["json_schema", "json_object+schema"]

    second = worker()
    await asyncio.gather(*(second.complete(job()) for _ in range(6)))

    assert formats(server)[2:] == ["json_object+schema"] * 6
    assert second.capabilities.failed_calls == 0
    assert second.capabilities.shared_hits == 1


async def test_a_fresh_worker_holds_no_call_behind_a_probe(
    server: FakeOpenAI, worker: Worker
) -> None:
    # Without the shared book, the second worker's first call would go alone and the rest
    # wait PROBE_WAIT_S for it: the arrivals would spread over that long.
    server.responder = like_llama_cpp
    await worker().complete(job())
    server.responder = slow_llama_cpp(delay_s=capabilities.PROBE_WAIT_S + 0.5)

    fresh = worker()
    await asyncio.gather(*(fresh.complete(job()) for _ in range(6)))

    arrivals = sorted(r.received_at for r in server.chat_requests[2:])
    assert len(arrivals) == 6
    assert arrivals[-1] - arrivals[0] < capabilities.PROBE_WAIT_S / 2, \
        "the fresh worker held its calls behind a probe"


async def test_stale_shared_capabilities_cost_one_refusal_and_are_rewritten(
    server: FakeOpenAI, worker: Worker, redis: aioredis.Redis, keys: Keys
) -> None:
    await worker().complete(job())  # the server took json_schema then
    server.responder = like_llama_cpp  # ...and was replaced by one that does not

    later = worker()
    answer = await later.complete(job())

    assert answer.text
    assert formats(server) == ["json_schema", "json_schema", "json_object+schema"]
    assert later.capabilities.shared_hits == 1 and later.capabilities.failed_calls == 1
    scope = later.capabilities._scope("smollm2")
    stored = await redis.get(RedisCapabilities(redis, keys).key(scope))
    assert stored is not None
    shared = decode(stored)
    assert shared is not None and shared.structured == "json_object_schema"


@pytest.mark.parametrize("damage", [b"not json", b'{"structured": "yaml"}',
                                    b'{"structured": "text", "strict": false, "token_param":'
                                    b' "max_tokens", "stream_options": true, "dropped":'
                                    b' ["model"]}'])
async def test_damaged_shared_entries_are_ignored(
    server: FakeOpenAI, worker: Worker, redis: aioredis.Redis, keys: Keys, damage: bytes
) -> None:
    server.responder = like_llama_cpp
    fresh = worker()
    await redis.set(RedisCapabilities(redis, keys).key(fresh.capabilities._scope("smollm2")),
                    damage)

    await fresh.complete(job())

    assert formats(server) == ["json_schema", "json_object+schema"]
    assert fresh.capabilities.shared_hits == 0


async def test_an_unreachable_redis_costs_only_the_probe(
    server: FakeOpenAI, worker: Worker
) -> None:
    server.responder = like_llama_cpp
    down = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        lonely = worker(store=RedisCapabilities(down, Keys("unreachable:")))
        answers = [await lonely.complete(job()) for _ in range(2)]
    finally:
        await down.aclose()

    assert all(a.text for a in answers)
    assert formats(server) == ["json_schema", "json_object+schema", "json_object+schema"]
    assert lonely.capabilities.failed_calls == 1


async def test_pinned_settings_do_not_take_what_auto_learnt(
    server: FakeOpenAI, worker: Worker
) -> None:
    server.responder = like_llama_cpp
    await worker().complete(job())

    pinned = worker(structured="json_object")
    await pinned.complete(job())

    assert formats(server)[-1] == "json_object"
    assert pinned.capabilities.shared_hits == 0


async def test_a_callers_model_name_never_becomes_part_of_a_key(
    server: FakeOpenAI, worker: Worker, redis: aioredis.Redis, keys: Keys
) -> None:
    hostile = "../{limits}*\r\nFLUSHALL " + "x" * 10_000
    await worker(model=hostile).complete(job())

    stored = [k.decode() async for k in redis.scan_iter(match=f"{keys.prefix}*")]
    assert len(stored) == 1
    assert re.fullmatch(re.escape(keys.prefix) + r"caps:[0-9a-f]{64}", stored[0])


class StalledBook:
    """A shared book whose first read never answers (a Redis that hangs), then reads empty."""

    def __init__(self) -> None:
        self.reads = 0

    async def load(self, scope: str) -> bytes | None:
        self.reads += 1
        if self.reads == 1:
            await asyncio.sleep(3600)
        return None

    async def save(self, scope: str, value: bytes) -> None:
        return None


async def test_a_call_cancelled_while_reading_the_book_leaves_the_gate_open(
    server: FakeOpenAI, make_plain: Callable[..., OpenAITextProvider]
) -> None:
    server.responder = like_llama_cpp
    provider = make_plain(StalledBook())
    stuck = asyncio.create_task(provider.complete(job()))
    await asyncio.sleep(0.2)
    stuck.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stuck

    started = asyncio.get_running_loop().time()
    await provider.complete(job())

    waited = asyncio.get_running_loop().time() - started
    assert waited < capabilities.PROBE_WAIT_S, "the next call waited on a gate nobody holds"
