"""The cluster tier's engines, started once per test session on loopback ports and stopped at
the end, also when a test fails: a 6-node Redis Cluster and a 3-node RabbitMQ cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.redis_cluster import RedisCluster


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
