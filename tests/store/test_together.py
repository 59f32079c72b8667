"""Calls sent together (store/together.py) on the real Redis: one pipeline, each answer in its
place, a script the server does not hold yet loaded and run once, a failing call alone."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from llm_consumer.store.keys import Keys
from llm_consumer.store.together import Call, script_call, together

COUNT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def test_calls_answer_in_order_and_an_unloaded_script_runs_once(
        redis: aioredis.Redis, keys: Keys) -> None:
    counter, name = f"{keys.prefix}counter", f"{keys.prefix}name"
    await redis.set(name, "Mira")
    # A script text no server has seen: its EVALSHA answers NOSCRIPT inside the pipeline,
    # and it is then loaded and run alone, once.
    fresh = redis.register_script(f"-- {uuid.uuid4()}\n{COUNT}")
    answers = await together(redis, [
        Call(lambda pipe: pipe.get(name), lambda: redis.get(name)),
        script_call(fresh, [counter], [5]),
        Call(lambda pipe: pipe.hmget(name + ":h", ["a"]), lambda: redis.hmget(name + ":h", ["a"])),
    ])
    assert answers == [b"Mira", 5, [None]]
    assert await redis.get(counter) == b"5"
    assert await together(redis, [script_call(fresh, [counter], [1]),
                                  script_call(fresh, [counter], [2])]) == [6, 8]


async def test_a_failing_call_fails_alone(redis: aioredis.Redis, keys: Keys) -> None:
    broken = redis.register_script("return redis.error_reply('no such luck')")
    counter = f"{keys.prefix}counter"
    counting = redis.register_script(COUNT)
    answers = await together(redis, [script_call(broken, [counter], []),
                                     script_call(counting, [counter], [3])])
    assert isinstance(answers[0], ResponseError) and "no such luck" in str(answers[0])
    assert answers[1] == 3
