"""REDIS_MODE=sentinel on a real master, replica and sentinel: the service finds the master
through the sentinel, and after the master is killed (`kill -9`) and the sentinel promotes the
replica, it goes on with the new master without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_consumer.events import catalog
from tests.bus.test_cache_e2e import SHEET, result_of
from tests.bus.test_limits_e2e import sheet
from tests.cluster.redis_cluster import cluster_ports
from tests.conftest import Service
from tests.hub import tap

MASTER = "llm-test-master"


class SentinelSetup:
    """A master, its replica and one sentinel (quorum 1) on loopback ports."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="llm-rcluster-sentinel-"))
        (self.root / "owner").write_text(str(os.getpid()))  # see rabbit_node.reap_leftovers
        self.master_port, self.replica_port, self.sentinel_port = cluster_ports(3)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.sentinel_port}/0"

    def start(self) -> None:
        self._server(self.master_port)
        self._server(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        conf = self.root / "sentinel.conf"
        conf.write_text(f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.root}\n"
                        f"sentinel monitor {MASTER} 127.0.0.1 {self.master_port} 1\n"
                        f"sentinel down-after-milliseconds {MASTER} 1000\n"
                        f"sentinel failover-timeout {MASTER} 5000\n")
        self._spawn(self.sentinel_port, ["redis-server", str(conf), "--sentinel"])
        _wait(lambda: "master_link_status:up" in self.cli(self.replica_port, "INFO",
                                                          "replication"), "replica in sync")
        _wait(lambda: "num-slaves\n1" in self.cli(self.sentinel_port, "SENTINEL", "master",
                                                  MASTER), "sentinel sees the replica")

    def wait_replicated(self) -> None:
        """Until the replica has everything the master has written so far."""
        def offset(port: int, field: str) -> int:
            info = self.cli(port, "INFO", "replication")
            return int(next(line.split(":")[1] for line in info.splitlines()
                            if line.startswith(f"{field}:")))

        written = offset(self.master_port, "master_repl_offset")
        _wait(lambda: offset(self.replica_port, "slave_repl_offset") >= written,
              "the replica caught up")

    def master(self) -> int:
        found = self.cli(self.sentinel_port, "SENTINEL", "get-master-addr-by-name", MASTER)
        return int(found.split()[1])

    def kill(self, port: int) -> None:
        process = self.processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for port in list(self.processes):
            with contextlib.suppress(Exception):
                self.kill(port)
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def cli(port: int, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                              text=True, timeout=10).stdout

    def _server(self, port: int, *extra: str) -> None:
        node_dir = self.root / str(port)
        node_dir.mkdir()
        self._spawn(port, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--dir", str(node_dir),
                           "--repl-diskless-sync-delay", "0", *extra])

    def _spawn(self, port: int, command: list[str]) -> None:
        self.processes[port] = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)
        (self.root / "pids").write_text("".join(
            f"{p.pid} {port_}\n" for port_, p in self.processes.items()))
        _wait(lambda: self.cli(port, "PING").strip() == "PONG", f"redis on {port}")


def _wait(check: Any, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"sentinel setup: timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def sentinel() -> Iterator[SentinelSetup]:
    setup = SentinelSetup()
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


async def test_the_service_follows_a_sentinel_failover(openai_service: Any, fake_openai: Any,
                                                       sentinel: SentinelSetup) -> None:
    service: Service = await openai_service(redis_mode="sentinel", redis_url=sentinel.url,
                                            redis_sentinel_master=MASTER, heartbeat_every_s=0.2)
    assert result_of(await service.request("character.backstory", SHEET))["cached"] is False
    assert result_of(await service.request("character.backstory", SHEET))["cached"] is True
    assert sentinel.master() == sentinel.master_port
    # Replication is asynchronous: the replica has the cached answer once it has caught up
    # with the master (killed right after the write, the master would take it along).
    await asyncio.to_thread(sentinel.wait_replicated)

    sentinel.kill(sentinel.master_port)
    await asyncio.to_thread(_wait, lambda: sentinel.master() == sentinel.replica_port,
                            "the replica promoted")
    # Calls made while there was no master (the heartbeat's, the batch coordinator's) put the
    # service in its Redis cool-down; it is back on the promoted master once a heartbeat says
    # the cache is ok again.
    async with tap(service.settings, catalog.SERVICE_HEARTBEAT) as hub, asyncio.timeout(30):
        while not any(beat["data"]["components"].get("cache") == "ok"
                      for beat in hub.of_type(catalog.SERVICE_HEARTBEAT)):
            await hub.wait_for(catalog.SERVICE_HEARTBEAT,
                               count=len(hub.of_type(catalog.SERVICE_HEARTBEAT)) + 1)
    # the promoted replica had the cached answer, and takes the new ones
    assert result_of(await service.request("character.backstory", SHEET))["cached"] is True
    fresh = [result_of(await service.request("world.location", sheet(7))) for _ in range(2)]
    assert [r["cached"] for r in fresh] == [False, True]
    assert len(fake_openai.chat_requests) == 2
