"""The README's path, as a user runs it: `inject` and `demo` on the embedded model."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest

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
    events = _json_objects(stdout)
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
    assert code == 3
    assert "start the service first" in stderr


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


def _json_objects(text: str) -> list[dict[str, Any]]:
    decoder, found, index = json.JSONDecoder(), [], 0
    while (start := text.find("{", index)) != -1:
        value, index = decoder.raw_decode(text, start)
        found.append(value)
    return found
