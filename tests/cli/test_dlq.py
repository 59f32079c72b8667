"""DLQ operations through the real CLI: list, show, replay (dry run, filters, limit), purge."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

from llm_consumer.bus.topology import build_topology
from llm_consumer.client import build_request
from llm_consumer.events import catalog
from llm_consumer.settings import Settings
from tests.conftest import Service, token
from tests.fakes.openai_server import server_error
from tests.hub import queue_depth, tap

BACKSTORY = {"context": {"name": "Mira", "class": "Rogue"}}


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SECRET_"))}
    env.update({"MESSAGE_HUB_URL": str(settings.message_hub_url),
                "HUB_EXCHANGE": settings.hub_exchange, "QUEUE_PREFIX": settings.queue_prefix,
                "COLUMNS": "200"})
    return env


async def cli(settings: Settings, *args: str,
              stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "llm_consumer", *args], env=cli_env(settings),
        capture_output=True, text=True, timeout=60, input=stdin)


async def fail_into_dlq(service: Service, fake_openai: Any, count: int) -> list[str]:
    """Requests whose every attempt fails with 500: they end in the DLQ."""
    fake_openai.script(*[server_error(500) for _ in range(count * service.settings.max_attempts)])
    ids = []
    for _ in range(count):
        result = await service.request("character.backstory", BACKSTORY, timeout_s=30)
        assert result.final is not None
        assert result.final["data"]["error"]["code"] == "provider_unavailable"
        ids.append(result.request["id"])
    return ids


async def test_dead_letters_are_listed_replayed_and_succeed(openai_service: Any,
                                                            fake_openai: Any) -> None:
    service: Service = await openai_service(max_attempts=1)
    ids = await fail_into_dlq(service, fake_openai, 3)
    dead = build_topology(service.settings.queue_prefix, service.settings.hub_exchange).dead.name
    assert await queue_depth(service.settings, dead) == 3

    listing = await cli(service.settings, "dlq", "list")
    assert listing.returncode == 0, listing.stderr
    for request_id in ids:
        assert request_id in listing.stdout
    assert "provider_unavailable" in listing.stdout

    shown = await cli(service.settings, "dlq", "show", ids[0])
    assert shown.returncode == 0 and "x-error-message" in shown.stdout and ids[0] in shown.stdout

    dry = await cli(service.settings, "dlq", "replay", "--dry-run")
    assert "3 of 3 would be replayed" in dry.stdout
    assert await queue_depth(service.settings, dead) == 3, "a dry run changes nothing"

    async with tap(service.settings, catalog.CONTENT_GENERATED) as hub:
        one = await cli(service.settings, "dlq", "replay", "--request-id", ids[0])
        assert "replayed 1 of 3" in one.stdout, one.stdout + one.stderr
        rest = await cli(service.settings, "dlq", "replay", "--limit", "5",
                         "--code", "provider_unavailable")
        assert "replayed 2 of 2" in rest.stdout, rest.stdout + rest.stderr
        for request_id in ids:
            await hub.wait_for(catalog.CONTENT_GENERATED, request_id)
    assert await queue_depth(service.settings, dead) == 0, "nothing left behind, nothing lost"


async def test_purge_asks_first(openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service(max_attempts=1)
    await fail_into_dlq(service, fake_openai, 1)
    dead = build_topology(service.settings.queue_prefix, service.settings.hub_exchange).dead.name
    refused = await cli(service.settings, "dlq", "purge", stdin="n\n")
    assert refused.returncode == 1
    assert await queue_depth(service.settings, dead) == 1
    purged = await cli(service.settings, "dlq", "purge", stdin="y\n")
    assert "purged 1 message" in purged.stdout
    assert await queue_depth(service.settings, dead) == 0


async def test_unrouted_results_are_kept_and_replayable(openai_service: Any) -> None:
    """A result nobody is bound to receive is kept, then delivered by replay once a peer binds."""
    service: Service = await openai_service()
    request = build_request("world.location", BACKSTORY)
    # A peer that publishes without reply_to and without a bound queue for results.
    import orjson

    from tests.hub import publish_raw
    await publish_raw(service.settings, orjson.dumps(request), routing_key="content.requested",
                      headers={"authorization": f"Bearer {token()}"})
    unrouted = build_topology(service.settings.queue_prefix,
                              service.settings.hub_exchange).unrouted.name
    for _ in range(100):
        if await queue_depth(service.settings, unrouted) >= 1:
            break
        await asyncio.sleep(0.1)
    listing = await cli(service.settings, "dlq", "list", "--queue", "unrouted")
    assert "content.generated" in listing.stdout
    async with tap(service.settings, catalog.CONTENT_GENERATED) as hub:
        replay = await cli(service.settings, "dlq", "replay", "--queue", "unrouted")
        assert "replayed 1" in replay.stdout, replay.stdout + replay.stderr
        [event] = await hub.wait_for(catalog.CONTENT_GENERATED, request["id"])
    assert event["data"]["kind"] == "world.location"
