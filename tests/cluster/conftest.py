"""The cluster tier's engines, started once per test session on loopback ports and stopped at
the end, also when a test fails: a 6-node Redis Cluster and a 3-node RabbitMQ cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.redis_cluster import RedisCluster
from tests.faults.rabbit_node import RabbitCluster, available


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    if not available():
        pytest.fail("the cluster tier needs the RabbitMQ server (rabbitmq-server) installed")
    cluster = RabbitCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
