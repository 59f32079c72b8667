"""A bounded dead-letter queue that loses nothing: when it is full, dead letters are parked in the
longest delay queue with their reason, an alarm is raised, and it clears once one lands again."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable
from typing import Any

import aio_pika
import orjson

from llm_consumer.bus.publisher import PARKED_HEADER, parked_dead_letter
from llm_consumer.bus.topology import build_topology
from llm_consumer.client import build_request
from llm_consumer.events import catalog
from llm_consumer.heartbeat import DEAD_LETTER_COMPONENT
from llm_consumer.settings import Settings
from tests.conftest import HUB_URL, Service, token
from tests.hub import Tap, dead_letters, publish_raw, queue_depth, tap
from tests.ports import free_port

AUTH = {"authorization": f"Bearer {token()}"}


async def depths(settings: Settings, *names: str, expect: tuple[int, ...],
                 timeout_s: float = 20) -> tuple[int, ...]:
    """Queue depths once they reach `expect` (or whatever they are at the time limit)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        found = tuple([await queue_depth(settings, name) for name in names])
        if found == expect or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.05)


async def alarm(hub: Tap, instance: str, status: str) -> dict[str, Any]:
    """The next heartbeat of `instance` whose dead-letter component says `status`."""
    seen = len(hub.of_type(catalog.SERVICE_HEARTBEAT))
    while True:
        beats = await hub.wait_for(catalog.SERVICE_HEARTBEAT, count=seen + 1)
        seen = len(beats)
        data: dict[str, Any] = beats[-1]["data"]
        if data["instance"] == instance and data["components"][DEAD_LETTER_COMPONENT] == status:
            return data


async def metric(port: int, name: str) -> float:
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(
        f"http://127.0.0.1:{port}/metrics", timeout=5).read())
    for line in body.decode().splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


async def test_a_full_dead_letter_queue_parks_dead_letters_and_raises_an_alarm(
        start_service: Callable[..., Any]) -> None:
    port = free_port()
    service: Service = await start_service(dead_letter_max_length=2, heartbeat_every_s=0.2,
                                           metrics_port=port)
    settings = service.settings
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    _, longest = topology.delays[-1]
    parked_before = await metric(port, "llm_dead_letters_parked_total")
    async with tap(settings, catalog.SERVICE_HEARTBEAT) as hub:
        for n in range(4):
            await publish_raw(settings, f"not json {n}".encode(),
                              routing_key="content.requested", headers=AUTH)
        beat = await alarm(hub, settings.instance_id, "degraded")
        assert beat["status"] == "degraded"
        # Nothing lost: 2 in the dead-letter queue, 2 parked, none left in the work queue.
        assert await depths(settings, topology.dead.name, longest.name, topology.work.name,
                            expect=(2, 2, 0)) == (2, 2, 0)
        assert await metric(port, "llm_dead_letter_queue_full") == 1
        assert await metric(port, "llm_dead_letters_parked_total") == parked_before + 2

        async with await aio_pika.connect(HUB_URL) as connection:
            channel = await connection.channel(publisher_confirms=True)
            delay = await channel.get_queue(longest.name)
            parked = [await delay.get(no_ack=False) for _ in range(2)]
            for copy in parked:
                code, reason = parked_dead_letter(copy.headers) or ("", "")
                assert code == "invalid_request" and "not valid JSON" in reason, copy.headers
                assert copy.body.startswith(b"not json ")

            # The operator drains the dead-letter queue; then a parked copy's 600 s are over
            # (the test moves it to the work queue itself), it is dead-lettered again, lands,
            # and the alarm clears.
            drained = await dead_letters(settings, expect=2)
            assert sorted(m.body for m in drained) + sorted(c.body for c in parked) == sorted(
                f"not json {n}".encode() for n in range(4)), "every message accounted for"
            back, kept = parked
            await channel.default_exchange.publish(
                aio_pika.Message(back.body, headers=back.headers, message_id=back.message_id),
                routing_key=topology.work.name)
            await back.ack()
            await kept.nack(requeue=True)
            cleared = await alarm(hub, settings.instance_id, "ok")
    assert cleared["status"] == "ok"
    assert await metric(port, "llm_dead_letter_queue_full") == 0
    [again] = await dead_letters(settings, expect=1)
    assert again.body == back.body
    assert again.headers["x-error-code"] == "invalid_request"
    assert again.headers["x-original-routing-key"] == "content.requested", "its first route"
    assert PARKED_HEADER not in again.headers, "a replay from the DLQ is processed normally"
    assert await queue_depth(settings, longest.name) == 1, "the other one is still parked"


async def test_a_dead_letter_the_exchange_cannot_route_is_parked_too(
        start_service: Callable[..., Any]) -> None:
    """An operator deleted the dead-letter queue: the dead letter is returned, and parked."""
    service: Service = await start_service()
    settings = service.settings
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    _, longest = topology.delays[-1]
    async with await aio_pika.connect(HUB_URL) as connection:
        channel = await connection.channel()
        await channel.queue_delete(topology.dead.name)
        await publish_raw(settings, b"[1, 2]", routing_key="content.requested", headers=AUTH)
        assert await depths(settings, longest.name, expect=(1,)) == (1,)
        copy = await (await channel.get_queue(longest.name)).get(no_ack=True)
    code, reason = parked_dead_letter(copy.headers) or ("", "")
    assert code == "invalid_request" and "JSON object" in reason
    assert copy.body == b"[1, 2]"


async def test_a_forged_parked_mark_only_dead_letters_the_forgers_own_message(
        openai_service: Callable[..., Any], fake_openai: Any) -> None:
    service: Service = await openai_service()
    request = build_request("world.location", {"context": {"name": "Mira"}})
    forged = {**AUTH, PARKED_HEADER: {"code": "internal", "message": "skip me"}}
    await publish_raw(service.settings, orjson.dumps(request), routing_key="content.requested",
                      headers=forged)
    [letter] = await dead_letters(service.settings, expect=1)
    assert letter.headers["x-error-code"] == "internal"
    assert orjson.loads(letter.body)["id"] == request["id"]
    assert not fake_openai.chat_requests, "never processed, never paid for"


def test_only_a_well_formed_mark_counts() -> None:
    assert parked_dead_letter(None) is None
    assert parked_dead_letter({PARKED_HEADER: "internal"}) is None
    assert parked_dead_letter({PARKED_HEADER: {"code": "Robert'); DROP"}}) is None
    assert parked_dead_letter({PARKED_HEADER: {"code": "x" * 65, "message": "m"}}) is None
    assert parked_dead_letter({PARKED_HEADER: {"code": b"timeout", "message": b"m" * 5000}}) == (
        "timeout", "m" * 1000)
