"""The cluster tier's engines, started once per test session on loopback ports and stopped at
the end: a 6-node Redis Cluster and a 3-node RabbitMQ cluster.

Nothing may outlive the session, also when it fails or is stopped: the fixtures stop their
clusters in `finally`, at interpreter exit (`atexit`), and on SIGTERM (turned into a
KeyboardInterrupt, so the `finally` runs); a cluster left by a session killed with SIGKILL is
reaped by the next one (`reap_leftovers`)."""

from __future__ import annotations

import atexit
import signal
from collections.abc import Callable, Iterator
from types import FrameType

import pytest

from tests.cluster.redis_cluster import RedisCluster
from tests.faults.rabbit_node import RabbitCluster, available, reap_leftovers


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _guarded(stop: Callable[[], None]) -> Callable[[], None]:
    """Register `stop` for interpreter exit and SIGTERM; the callable undoes both."""
    atexit.register(stop)
    previous = signal.signal(signal.SIGTERM, _interrupt)

    def release() -> None:
        atexit.unregister(stop)
        signal.signal(signal.SIGTERM, previous)

    return release


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    reap_leftovers("llm-rcluster-*")
    cluster = RedisCluster()
    release = _guarded(cluster.stop)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        release()


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    if not available():
        pytest.fail("the cluster tier needs the RabbitMQ server (rabbitmq-server) installed")
    reap_leftovers()
    cluster = RabbitCluster()
    release = _guarded(cluster.stop)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        release()
