"""The README's path, as a user runs it: `inject` and `demo` on the embedded model."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import jwt
import pytest

from llm_consumer.cli.common import Exit
from llm_consumer.events.content import CharacterBackstory
from tests.cli.test_dlq import cli_env
from tests.conftest import HUB_URL, REDIS_URL, SECRET, Service


async def run_cli(env: dict[str, str], *args: str, timeout_s: float = 300) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_consumer", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.mark.slow
async def test_inject_round_trip_on_the_embedded_model(start_service: Any) -> None:
    service: Service = await start_service()  # no OPENAI_API_KEY: the embedded model
    env = {**cli_env(service.settings), "SECRET_KEY": SECRET}
    code, stdout, stderr = await run_cli(
        env, "inject", "character.backstory", "--json", "--theme", "dark-fantasy",
        "--context", json.dumps({"name": "Mira", "race": "Half-Elf", "class": "Rogue"}))
    assert code == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]  # JSON Lines
    final = events[-1]
    assert final["type"] == "content.generated", final
    assert final["data"]["model_used"] == "smollm2-135m-instruct"
    CharacterBackstory.model_validate(final["data"]["content"])
    assert final["data"]["token_usage"]["estimated"] is False


@pytest.mark.slow
async def test_inject_prints_a_readable_failure(start_service: Any) -> None:
    service: Service = await start_service()
    env = {**cli_env(service.settings), "SECRET_KEY": SECRET}
    code, stdout, _ = await run_cli(env, "inject", "portrait", "--prompt", "a dwarf smith")
    assert code == 1
    assert "generation.failed" in stdout and "no_provider" in stdout


async def test_inject_without_a_service_says_so(settings_factory: Any) -> None:
    settings = settings_factory()
    env = {**cli_env(settings), "SECRET_KEY": SECRET}
    code, _, stderr = await run_cli(env, "inject", "character.backstory", "--context", "{}")
    assert code == Exit.NO_SERVICE
    assert "start the service first" in stderr and len(stderr.strip().splitlines()) == 1


async def test_inject_rejects_bad_context_json(settings_factory: Any) -> None:
    env = {**cli_env(settings_factory()), "SECRET_KEY": SECRET}
    code, _, stderr = await run_cli(env, "inject", "character.backstory", "--context", "{oops")
    assert code == 2 and "not valid JSON" in stderr


@pytest.mark.slow
async def test_demo_runs_the_consumer_and_prints_the_generated_event(
    settings_factory: Any,
) -> None:
    settings = settings_factory()
    env = {k: v for k, v in cli_env(settings).items() if k != "SECRET_KEY"}
    env.update({"REDIS_URL": REDIS_URL, "REDIS_PREFIX": settings.redis_prefix,
                "MESSAGE_HUB_URL": HUB_URL})
    code, stdout, stderr = await run_cli(env, "demo")
    assert code == 0, stdout + stderr
    assert "content.generated" in stdout and "character.backstory" in stdout
    assert "throw-away key" in stderr
    assert "SmolLM2-135M, a tiny CPU model: expect short, simple text" in stdout
    assert "llama_" not in stdout + stderr, "llama.cpp's own lines stay out of the output"



async def test_inject_json_is_json_lines_and_subject_reaches_the_result(
        openai_service: Any) -> None:
    service: Service = await openai_service()
    env = {**cli_env(service.settings), "SECRET_KEY": SECRET}
    code, stdout, stderr = await run_cli(
        env, "inject", "character.backstory", "--json", "--stream", "--subject",
        "character/42", "--context", json.dumps({"name": "Mira"}), timeout_s=60)
    assert code == 0, stderr
    lines = stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert len(lines) >= 2 and all(isinstance(e, dict) for e in events)
    assert events[-1]["type"] == "content.generated"
    assert events[-1].get("subject") == "character/42"


async def test_inject_with_an_expired_token_prints_the_reason_at_once(
        start_service: Any) -> None:
    """The service answers an unauthenticated caller on the hub only (reply_to is a
    capability): inject hears it there and does not wait out its time-out."""
    service: Service = await start_service()
    now = int(time.time())
    expired = jwt.encode({"sub": "peer", "permissions": ["llm:content"], "iat": now - 3600,
                          "exp": now - 600}, SECRET, algorithm="HS256")
    env = {**cli_env(service.settings), "SECRET_KEY": SECRET}
    started = time.monotonic()
    code, _, stderr = await run_cli(env, "inject", "character.backstory", "--context",
                                    "{}", "--token", expired, "--timeout", "60",
                                    timeout_s=60)
    elapsed = time.monotonic() - started
    assert code == Exit.FAILED, stderr
    assert elapsed < 15, f"waited {elapsed:.1f}s"
    [line] = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert ": unauthorized: " in line, line
    assert "Traceback" not in stderr


async def test_inject_warns_when_no_consumer_is_attached(start_service: Any) -> None:
    service: Service = await start_service()
    await service.close()  # its queues stay, nobody consumes them
    env = {**cli_env(service.settings), "SECRET_KEY": SECRET}
    code, _, stderr = await run_cli(env, "inject", "character.backstory", "--context", "{}",
                                    "--timeout", "1")
    assert code == Exit.TIMEOUT
    assert stderr.splitlines() == [
        f"warning: no consumer is attached to {service.settings.queue_prefix}requests: the "
        "request waits there until a service runs (llm-consumer run)",
        stderr.splitlines()[-1]]
    assert stderr.splitlines()[-1].startswith("error: no result for ")


async def test_a_dead_letter_alone_ends_the_wait(settings_factory: Any) -> None:
    """A refusal that reaches the hub only as a dead letter (no event at all) still ends
    inject's wait at once, with the dead letter's code and reason."""
    import aio_pika

    from llm_consumer.bus.topology import build_topology
    from llm_consumer.client import DeadLetterSeen, Watch, build_request, send_and_wait

    settings = settings_factory()
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    request = build_request("character.backstory", {"context": {}})
    notices: list[str] = []
    async with await aio_pika.connect(HUB_URL) as connection:
        channel = await connection.channel()
        hub = await channel.declare_exchange(settings.hub_exchange,
                                             aio_pika.ExchangeType.TOPIC, durable=True)
        dlx = await channel.declare_exchange(topology.dead_letter_exchange,
                                             aio_pika.ExchangeType.TOPIC, durable=True)
        work = await channel.declare_queue(topology.work.name, auto_delete=True)
        await work.bind(hub, routing_key="content.requested")

        async def refuse(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():  # a service that dead-letters, and says nothing
                await dlx.publish(aio_pika.Message(
                    message.body, message_id=message.message_id,
                    headers={"x-error-code": "invalid_request",
                             "x-error-message": "unknown kind"}),
                    routing_key=message.routing_key or "")

        await work.consume(refuse)
        started = time.monotonic()
        outcome = await send_and_wait(
            HUB_URL, settings.hub_exchange, request, token="t", timeout_s=30,
            watch=Watch(dead_letter_exchange=dlx.name, work_queue=work.name),
            on_notice=notices.append)
    assert time.monotonic() - started < 5
    assert outcome.dead_letter == DeadLetterSeen("invalid_request", "unknown kind")
    assert outcome.final is None and notices == [], "a consumer was attached"
