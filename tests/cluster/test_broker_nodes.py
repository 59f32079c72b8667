"""Several broker nodes in MESSAGE_HUB_URL: the syntax, and a connection that rotates through
them (two TCP proxies in front of the shared broker stand in for two nodes here; the cluster
tier kills real nodes)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from llm_consumer.bus.nodes import parse_nodes
from llm_consumer.settings import SettingsError, load_settings
from tests.conftest import HUB_URL, Service
from tests.faults.proxy import FaultProxy
from tests.ports import free_port

SHEET = {"context": {"name": "Mira Thornvale", "race": "Half-Elf", "class": "Rogue"},
         "theme": {"preset": "dark-fantasy"}}


@pytest.mark.parametrize(("value", "nodes"), [
    ("amqp://u:p@h1:5672,h2:5673/vh",
     ("amqp://u:p@h1:5672/vh", "amqp://u:p@h2:5673/vh")),
    ("amqp://u:p@h1/,amqp://u:p@h2:5673/", ("amqp://u:p@h1/", "amqp://u:p@h2:5673/")),
    ("amqps://h1,h2?heartbeat=10", ("amqps://h1:5671?heartbeat=10", "amqps://h2:5671?heartbeat=10")),
    ("amqp://guest:guest@127.0.0.1:5672/", ("amqp://guest:guest@127.0.0.1:5672/",)),
])
def test_the_node_list_syntax(value: str, nodes: tuple[str, ...]) -> None:
    assert parse_nodes(value) == nodes


@pytest.mark.parametrize(("value", "line"), [
    ("amqp://h1:99999,h2/", "MESSAGE_HUB_URL has an invalid port number 99999 for h1"),
    ("http://h1/", "MESSAGE_HUB_URL must be an amqp:// or amqps:// URL (several nodes: a comma "
                   "list of URLs, or amqp://user:pass@host1:port1,host2:port2/vhost)"),
])
def test_a_bad_node_list_is_one_line(monkeypatch: pytest.MonkeyPatch, value: str,
                                     line: str) -> None:
    monkeypatch.setenv("MESSAGE_HUB_URL", value)
    with pytest.raises(SettingsError) as raised:
        load_settings(need_secret=False)
    assert str(raised.value) == f"invalid configuration: {line}"


@pytest.fixture
async def two_nodes() -> AsyncIterator[tuple[FaultProxy, FaultProxy]]:
    proxies = (FaultProxy("127.0.0.1", 5672), FaultProxy("127.0.0.1", 5672))
    for proxy in proxies:
        await proxy.start()
    yield proxies
    for proxy in proxies:
        await proxy.close()


async def test_start_up_skips_a_dead_node(openai_service: Callable[..., Any]) -> None:
    dead = free_port()
    service: Service = await openai_service(
        message_hub_url=f"amqp://guest:guest@127.0.0.1:{dead},127.0.0.1:5672/")
    exchange = await service.request("character.backstory", SHEET)
    assert exchange.final is not None and exchange.final["type"] == "content.generated"


async def test_the_consumer_comes_back_on_the_next_node(
        openai_service: Callable[..., Any], two_nodes: tuple[FaultProxy, FaultProxy]) -> None:
    first, second = two_nodes
    url = f"{first.url(HUB_URL)},{second.url(HUB_URL)}"
    service: Service = await openai_service(message_hub_url=url)
    assert first.open_links >= 1 and second.accepted == 0
    exchange = await service.request("character.backstory", SHEET)
    assert exchange.final is not None and exchange.final["type"] == "content.generated"

    lost_at = time.monotonic()
    first.reset()  # the node dies: its connections drop, new ones are refused
    await first.close()
    exchange = await service.request("character.backstory", {**SHEET, "cache": False},
                                     timeout_s=30)
    assert exchange.final is not None and exchange.final["type"] == "content.generated"
    assert second.open_links >= 1
    assert time.monotonic() - lost_at < 15
