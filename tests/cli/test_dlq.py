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
    for _ in range(100):  # generation.failed is published before the dead letter
        if await queue_depth(service.settings, dead) == 3:
            break
        await asyncio.sleep(0.05)
    assert await queue_depth(service.settings, dead) == 3

    listing = await cli(service.settings, "dlq", "list")
    assert listing.returncode == 0, listing.stderr
    for request_id in ids:
        assert request_id in listing.stdout
    assert "provider_unavailable" in listing.stdout
    narrow = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "llm_consumer", "dlq", "list"],
        env={**cli_env(service.settings), "COLUMNS": "80"}, capture_output=True, text=True,
        timeout=60)
    assert all(len(line) <= 80 for line in narrow.stdout.splitlines())
    for request_id in ids:  # whole, on a line of its own: never cut at 80 columns
        assert request_id in narrow.stdout

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
    for _ in range(100):  # generation.failed is published before the dead letter
        if await queue_depth(service.settings, dead) == 1:
            break
        await asyncio.sleep(0.05)
    refused = await cli(service.settings, "dlq", "purge", stdin="n\n")
    assert refused.returncode == 1
    assert await queue_depth(service.settings, dead) == 1
    purged = await cli(service.settings, "dlq", "purge", stdin="y\n")
    assert "purged 1 message" in purged.stdout
    assert await queue_depth(service.settings, dead) == 0


async def test_unrouted_results_are_kept_and_replayable(openai_service: Any) -> None:
    """A result nobody is bound to receive is kept, then delivered by replay once a peer binds."""
    from llm_consumer import metrics

    counted = metrics.EVENTS_UNROUTED.labels(catalog.CONTENT_GENERATED)
    before = counted._value.get()
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
    assert counted._value.get() == before + 1, "llm_events_unrouted counts it"
    listing = await cli(service.settings, "dlq", "list", "--queue", "unrouted")
    assert "content.generated" in listing.stdout
    async with tap(service.settings, catalog.CONTENT_GENERATED) as hub:
        replay = await cli(service.settings, "dlq", "replay", "--queue", "unrouted")
        assert "replayed 1" in replay.stdout, replay.stdout + replay.stderr
        [event] = await hub.wait_for(catalog.CONTENT_GENERATED, request["id"])
    assert event["data"]["kind"] == "world.location"


async def test_shown_dead_letters_have_their_secrets_redacted_and_replay_keeps_them(
        openai_service: Any, fake_openai: Any) -> None:
    """list, show and their JSON never print the bearer token or another secret header; the
    replayed copy still carries the token, so the request then succeeds."""
    import orjson

    from tests.hub import publish_raw

    service: Service = await openai_service(max_attempts=1)
    settings = service.settings
    fake_openai.script(server_error(500))
    secret_token, api_key = token(subject="alice"), "sk-live-0123456789abcdef"
    request = build_request("world.location", BACKSTORY)
    odd = {**build_request("world.location", BACKSTORY), "id": "[bold]x[/bold][/]",
           "data": {"kind": "character.hairstyle"}}  # refused: dead-lettered at once
    dead = build_topology(settings.queue_prefix, settings.hub_exchange).dead.name
    async with tap(settings, catalog.GENERATION_FAILED) as hub:
        await publish_raw(settings, orjson.dumps(request), routing_key="content.requested",
                          headers={"Authorization": f"Bearer {secret_token}",
                                   "X-Api-Key": api_key})
        await hub.wait_for(catalog.GENERATION_FAILED, request["id"])
    await publish_raw(settings, orjson.dumps(odd), routing_key="content.requested",
                      headers={"authorization": f"Bearer {secret_token}"})
    for _ in range(200):
        if await queue_depth(settings, dead) == 2:
            break
        await asyncio.sleep(0.05)
    shown = f"Bearer <redacted sub=alice …{secret_token[-4:]}>"

    listing = await cli(settings, "dlq", "list")
    assert listing.returncode == 0, listing.stderr
    assert request["id"] in listing.stdout and "[bold]x[/bold][/]" in listing.stdout, (
        listing.stdout)
    as_json = await cli(settings, "dlq", "list", "--json")
    assert as_json.returncode == 0, as_json.stderr
    lines = as_json.stdout.splitlines()
    assert len(lines) == 2, "JSON Lines: one dead letter per line"
    letters = {x["request_id"]: x for x in map(orjson.loads, lines)}
    assert letters[request["id"]]["headers"]["Authorization"] == shown
    assert letters[request["id"]]["headers"]["X-Api-Key"] == "<redacted>"
    assert letters[odd["id"]]["headers"]["authorization"] == shown
    assert letters[request["id"]]["code"] == "provider_unavailable"

    text = await cli(settings, "dlq", "show", request["id"])
    detail = await cli(settings, "dlq", "show", request["id"], "--json")
    assert text.returncode == 0 and detail.returncode == 0, text.stderr + detail.stderr
    assert shown in text.stdout and "<redacted>" in text.stdout
    assert orjson.loads(detail.stdout)["body"]["id"] == request["id"]
    assert orjson.loads(detail.stdout)["headers"]["Authorization"] == shown
    for output in (listing, as_json, text, detail):
        assert secret_token.split(".")[2] not in output.stdout + output.stderr
        assert api_key not in output.stdout + output.stderr

    async with tap(settings, catalog.CONTENT_GENERATED) as results:
        replay = await cli(settings, "dlq", "replay", "--request-id", request["id"])
        assert "replayed 1 of 2" in replay.stdout, replay.stdout + replay.stderr
        [done] = await results.wait_for(catalog.CONTENT_GENERATED, request["id"])
    assert done["data"]["kind"] == "world.location", "the token survived the replay"


async def test_a_replayed_request_that_fails_again_keeps_its_type(openai_service: Any,
                                                                  fake_openai: Any) -> None:
    """A replay (and a retry copy) reaches the work queue by its name; its dead letter is still
    filed under its request type, so `dlq list --type` finds it."""
    service: Service = await openai_service(max_attempts=2)
    [request_id] = await fail_into_dlq(service, fake_openai, 1)  # a retry, then the DLQ
    dead = build_topology(service.settings.queue_prefix, service.settings.hub_exchange).dead.name

    async def listed_by_type() -> list[str]:
        found = await cli(service.settings, "dlq", "list", "--json", "--type",
                          catalog.CONTENT_REQUESTED)
        assert found.returncode == 0, found.stderr
        return [line for line in found.stdout.splitlines() if request_id in line]

    for _ in range(100):
        if await queue_depth(service.settings, dead) == 1:
            break
        await asyncio.sleep(0.05)
    assert len(await listed_by_type()) == 1

    fake_openai.script(*[server_error(500) for _ in range(2)])
    async with tap(service.settings, catalog.GENERATION_FAILED) as hub:
        replayed = await cli(service.settings, "dlq", "replay", "--request-id", request_id)
        assert "replayed 1 of 1" in replayed.stdout, replayed.stdout + replayed.stderr
        await hub.wait_for(catalog.GENERATION_FAILED, request_id)
    for _ in range(100):
        if await queue_depth(service.settings, dead) == 1:
            break
        await asyncio.sleep(0.05)
    [line] = await listed_by_type()
    assert f'"type":"{catalog.CONTENT_REQUESTED}"' in line.replace(" ", "")
