"""What the fault tests break: a RabbitMQ node of their own (one per module), a redis-server of
their own, a TCP fault proxy in front of the shared broker."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import urllib.parse
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.conftest import HUB_URL
from tests.faults.proxy import FaultProxy
from tests.faults.rabbit_node import RabbitNode, available
from tests.store.conftest import RedisServer


@pytest.fixture(scope="module")
def own_rabbit() -> Iterator[RabbitNode]:
    if not available():
        pytest.skip("needs the RabbitMQ server installed on this machine (rabbitmq-server)")
    node = RabbitNode()
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:  # a paused server must not stay paused
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.process.pid, signal.SIGCONT)
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
async def broker_proxy() -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the shared broker (MESSAGE_HUB_URL)."""
    parts = urllib.parse.urlsplit(HUB_URL)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    yield proxy
    await proxy.close()
