"""Queues and exchanges that already exist in another form: one clear line, or adopted."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from structlog.testing import capture_logs

from llm_consumer.app import run_service
from llm_consumer.bus.declare import TopologyConflict
from llm_consumer.settings import Settings
from tests.cli.test_dlq import cli_env
from tests.conftest import HUB_URL, SECRET, Service, token
from tests.hub import dead_letters, publish_raw


async def predeclare(*, queue: str | None = None, exchange: str | None = None,
                     exchange_type: str = "topic",
                     arguments: dict[str, Any] | None = None) -> None:
    """Declare an object as an operator (or an earlier version) did before the service."""
    async with await aio_pika.connect(HUB_URL) as connection:
        channel = await connection.channel()
        if queue is not None:
            await channel.declare_queue(queue, durable=True, arguments=arguments)
        if exchange is not None:
            await channel.declare_exchange(exchange, exchange_type, durable=True,
                                           arguments=arguments)


async def start_up_error(settings: Settings) -> str:
    with pytest.raises(TopologyConflict) as raised:
        await asyncio.wait_for(run_service(settings, stop=asyncio.Event()), 30)
    return str(raised.value)


@pytest.mark.parametrize(
    ("arguments", "has", "declares"),
    [
        ({"x-queue-type": "quorum"},
         "it has x-dead-letter-exchange unset, x-queue-type 'quorum'",
         "the service declares x-dead-letter-exchange '{prefix}dlx', x-max-priority 9, "
         "x-queue-type classic"),
        ({"x-max-priority": 5, "x-dead-letter-exchange": "elsewhere"},
         "it has x-dead-letter-exchange 'elsewhere', x-max-priority 5",
         "the service declares x-dead-letter-exchange '{prefix}dlx', x-max-priority 9"),
    ],
    ids=["quorum", "wrong-priority"],
)
async def test_a_work_queue_of_another_form_stops_start_up_with_one_line(
        settings_factory: Callable[..., Settings], arguments: dict[str, Any], has: str,
        declares: str) -> None:
    settings = settings_factory()
    await predeclare(queue=f"{settings.queue_prefix}requests", arguments=arguments)
    line = await start_up_error(settings)
    prefix = settings.queue_prefix
    assert line == (f"queue '{prefix}requests' already exists with other arguments: {has}; "
                    f"{declares.format(prefix=prefix)} (delete it once it is drained, or set "
                    "another QUEUE_PREFIX)")


async def test_a_hub_of_another_type_stops_start_up(
        settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    await predeclare(exchange=settings.hub_exchange, exchange_type="direct")
    line = await start_up_error(settings)
    assert line == (f"exchange '{settings.hub_exchange}' already exists with other arguments: "
                    "it has type 'direct'; the service declares type 'topic' (delete it once it "
                    "is drained, or set another HUB_EXCHANGE)")


async def test_run_prints_one_line_and_exits_2(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    await predeclare(queue=f"{settings.queue_prefix}requests",
                     arguments={"x-queue-type": "quorum"})
    env = cli_env(settings)
    env.update({"SECRET_KEY": SECRET, "REDIS_URL": settings.redis_url,
                "REDIS_PREFIX": settings.redis_prefix, "OPENAI_API_KEY": "sk-test",
                "LOG_LEVEL": "INFO"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_consumer", "run", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: queue '{settings.queue_prefix}requests' already exists "
                               "with other arguments: it has ")
    assert "x-queue-type 'quorum'" in lines[0] and "Traceback" not in stdout.decode()


async def test_an_unbounded_dead_letter_queue_of_earlier_versions_is_adopted(
        start_service: Callable[..., Any], settings_factory: Callable[..., Settings]) -> None:
    """The dead-letter queue as earlier versions declared it (no bound), and a platform hub
    with an alternate exchange: both adopted, and dead letters still land."""
    settings = settings_factory()
    await predeclare(queue=f"{settings.queue_prefix}dead")
    await predeclare(exchange=settings.hub_exchange,
                     arguments={"alternate-exchange": "platform.unrouted"})
    with capture_logs() as logs:
        service: Service = await start_service(**{
            name: getattr(settings, name)
            for name in ("hub_exchange", "queue_prefix", "redis_prefix", "instance_id")})
    adopted = {(e["object"], e["name"]): e["differences"] for e in logs
               if e["event"] == "topology.adopted"}
    assert set(adopted) == {("queue", f"{settings.queue_prefix}dead"),
                            ("exchange", settings.hub_exchange)}
    assert "it has x-max-length unset, x-overflow unset" in adopted[
        ("queue", f"{settings.queue_prefix}dead")]
    await publish_raw(service.settings, b"not json", routing_key="content.requested",
                      headers={"authorization": f"Bearer {token()}"})
    [letter] = await dead_letters(service.settings, expect=1)
    assert letter.headers["x-error-code"] == "invalid_request"
    async with await aio_pika.connect(HUB_URL) as connection:  # still the unbounded queue:
        channel = await connection.channel()  # declaring it as it was is accepted
        await channel.declare_queue(f"{settings.queue_prefix}dead", durable=True)
