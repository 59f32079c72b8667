"""Every way the CLI meets a broker or Redis it cannot use ends in one line and its exit code
(cli/common.py), never a traceback: a wrong port, password or virtual host, a fresh hub."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from llm_consumer.cli.common import Exit
from llm_consumer.settings import Settings
from tests.cli.test_dlq import cli_env
from tests.conftest import SECRET
from tests.ports import free_port


async def run_cli(env: dict[str, str], *args: str, timeout_s: float = 60,
                  ) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_consumer", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def env_for(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {**cli_env(settings), "SECRET_KEY": SECRET, "REDIS_URL": settings.redis_url,
           "REDIS_PREFIX": settings.redis_prefix, "LOG_LEVEL": "INFO"}
    env.update(overrides)
    return env


BROKER_MISTAKES = {
    "port": ("amqp://guest:guest@127.0.0.1:{port}/", "cannot reach the broker at 127.0.0.1:"),
    "password": ("amqp://guest:wrong@127.0.0.1:5672/",
                 "refused user 'guest': wrong user name or password"),
    "vhost": ("amqp://guest:guest@127.0.0.1:5672/no-such-vhost",
              "refused virtual host 'no-such-vhost' to user 'guest'"),
}
COMMANDS = {
    "run": ("run",),
    "inject": ("inject", "character.backstory", "--context", "{}"),
    "dlq list": ("dlq", "list"),
    "dlq replay": ("dlq", "replay"),
    "demo": ("demo",),
}


@pytest.mark.parametrize("mistake", sorted(BROKER_MISTAKES))
async def test_a_broker_mistake_is_one_line_with_exit_5_in_every_command(
        settings_factory: Any, mistake: str) -> None:
    url, expected = BROKER_MISTAKES[mistake]
    env = env_for(settings_factory(), MESSAGE_HUB_URL=url.format(port=free_port()))
    results = await asyncio.gather(*(run_cli(env, *args) for args in COMMANDS.values()))
    for name, (code, stdout, stderr) in zip(COMMANDS, results, strict=True):
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (name, stderr)
        assert lines[0].startswith("error: ") and expected in lines[0], (name, lines[0])
        assert code == Exit.BROKER, (name, code, stderr)
        assert "Traceback" not in stdout + stderr and "wrong@" not in stderr


async def test_health_names_the_broker_it_cannot_reach(settings_factory: Any) -> None:
    env = env_for(settings_factory(),
                  MESSAGE_HUB_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    code, stdout, stderr = await run_cli(env, "health", "--wait", "0.1", "--json")
    assert code == Exit.BROKER
    assert "cannot reach the broker" in stderr and "Traceback" not in stderr
    assert '{"check":"broker","status":"down"}' in stdout.splitlines()


@pytest.mark.parametrize("args", [("cache", "stats"), ("usage",), ("cache", "invalidate")])
async def test_redis_that_cannot_be_reached_is_one_line_with_exit_6(
        settings_factory: Any, args: tuple[str, ...]) -> None:
    env = env_for(settings_factory(), REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    code, _, stderr = await run_cli(env, *args)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Redis at redis://127.0.0.1:"), stderr
    assert code == Exit.REDIS


async def test_dlq_on_a_fresh_hub_says_so_in_one_line(settings_factory: Any) -> None:
    settings = settings_factory()  # a prefix no service ever declared
    env = env_for(settings)
    for args in (("dlq", "list"), ("dlq", "list", "--json"), ("dlq", "replay"),
                 ("dlq", "purge", "--yes"), ("dlq", "list", "--queue", "unrouted")):
        code, stdout, stderr = await run_cli(env, *args)
        assert code == 0, (args, stderr)
        [line] = stderr.strip().splitlines()
        assert line.startswith(f"{settings.queue_prefix}") and "does not exist" in line, line
        assert "QUEUE_PREFIX" in line and stdout == "", (args, stdout)
    code, _, stderr = await run_cli(env, "dlq", "show", "some-id")
    assert code == Exit.FAILED and len(stderr.strip().splitlines()) == 1


async def test_dlq_on_an_empty_queue_says_so(start_service: Any) -> None:
    service = await start_service()
    code, stdout, stderr = await run_cli(env_for(service.settings), "dlq", "list")
    assert code == 0, stderr
    assert stdout.strip() == f"{service.settings.queue_prefix}dead is empty: no dead letters"
    code, stdout, _ = await run_cli(env_for(service.settings), "dlq", "list", "--json")
    assert code == 0 and stdout == ""


@pytest.mark.parametrize(("args", "expected"), [
    (("--ttl", "-5"), "--ttl must be between 1 and 86400 seconds (MAX_TOKEN_LIFETIME_S), not -5"),
    (("--ttl", "86401"),
     "--ttl must be between 1 and 86400 seconds (MAX_TOKEN_LIFETIME_S), not 86401"),
    (("--scope", "llm:content", "--scope", "llm:everything"),
     "unknown scope 'llm:everything'; known: llm:content, llm:image, llm:admin"),
])
async def test_token_refuses_what_it_cannot_mint(settings_factory: Any, args: tuple[str, ...],
                                                 expected: str) -> None:
    code, stdout, stderr = await run_cli(env_for(settings_factory()), "token", *args)
    assert code == Exit.USAGE and stdout == ""
    assert stderr.strip().splitlines() == [f"error: {expected}"]


async def test_token_mints_with_the_scopes_asked(settings_factory: Any) -> None:
    import jwt

    code, stdout, _ = await run_cli(env_for(settings_factory()), "token", "--scope",
                                    "llm:image", "--ttl", "60", "--subject", "peer")
    assert code == 0
    claims = jwt.decode(stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "peer" and claims["exp"] - claims["iat"] == 60
    assert "llm:image" in str(claims) and "llm:admin" not in str(claims)


async def test_version(settings_factory: Any) -> None:
    from llm_consumer import __version__

    code, stdout, _ = await run_cli(env_for(settings_factory()), "--version")
    assert code == 0 and stdout == f"llm-consumer {__version__}\n"


async def test_completion_is_offered(settings_factory: Any) -> None:
    code, stdout, _ = await run_cli({**env_for(settings_factory()), "SHELL": "/bin/bash"},
                                    "--show-completion", "bash")
    assert code == 0 and "complete" in stdout and "llm" in stdout


async def test_no_color_means_no_escape_codes(settings_factory: Any) -> None:
    """FORCE_COLOR makes rich colour a pipe; NO_COLOR wins over it, everywhere."""
    env = env_for(settings_factory(), FORCE_COLOR="1", COLUMNS="100")
    commands = (("--help",), ("dlq", "list"), ("token", "--ttl", "-5"), ("inject", "--help"))
    coloured = [await run_cli(env, *args) for args in commands]
    assert any("\x1b[" in out + err for _, out, err in coloured), "the check can fail"
    for args in commands:
        _, stdout, stderr = await run_cli({**env, "NO_COLOR": "1"}, *args)
        assert "\x1b[" not in stdout + stderr, args



async def test_health_reports_json_lines(start_service: Any) -> None:
    import json

    service = await start_service(heartbeat_every_s=0.5)
    code, stdout, stderr = await run_cli(env_for(service.settings), "health", "--wait", "2",
                                         "--json")
    assert code == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert lines[:2] == [{"check": "redis", "status": "ok"}, {"check": "broker", "status": "ok"}]
    assert [x["instance"] for x in lines[2:]] == [service.settings.instance_id]


@pytest.mark.parametrize(("args", "expected"), [
    (("inject", "character.backstory", "--priority", "12"),
     "error: Invalid value for '--priority': Input should be less than or equal to 9"),
    (("dlq", "list", "--limit", "0"), "error: Invalid value for '--limit'"),
    (("no-such-command",), "error: No such command 'no-such-command'."),
    (("token", "--bogus"), "error: No such option: --bogus"),
])
async def test_a_usage_error_is_one_line_with_exit_2(settings_factory: Any,
                                                     args: tuple[str, ...], expected: str) -> None:
    code, stdout, stderr = await run_cli(env_for(settings_factory()), *args)
    assert code == Exit.USAGE and stdout == ""
    [line] = stderr.strip().splitlines()
    assert line.startswith(expected) and line.endswith("--help`)"), line
