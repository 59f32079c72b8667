"""A Redis Cluster of the tests' own: 6 `redis-server --cluster-enabled yes` on loopback ports
(3 masters, 3 replicas) joined with `redis-cli --cluster create --cluster-replicas 1`.

Each node has its own directory (nodes.conf, no persistence); cluster-node-timeout is short, so a
killed master's replica is promoted within a few seconds. `stop` kills every node it started,
whatever state the test left them in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.ports import bindable, ephemeral_range, free_port

NODE_TIMEOUT_MS = 1000
START_TIMEOUT_S = 30.0


def cluster_ports(count: int) -> list[int]:
    """Ports whose cluster bus port (+10000) is free as well, both below the kernel's ephemeral
    range (tests/ports.py), so a node restarted on its ports finds them free; on a machine
    whose range leaves no room for both, any free pair."""
    low, _ = ephemeral_range()
    below = low > 20000  # room for a port and its bus port under the range
    found: list[int] = []
    while len(found) < count:
        port = free_port()
        if (not below or port + 10000 < low) and port + 10000 < 65536 and bindable(port + 10000):
            found.append(port)
    return found


@dataclass
class RedisNode:
    port: int
    dir: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / "nodes.conf"),
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
             "--repl-diskless-sync-delay", "0",
             "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                              text=True, timeout=10).stdout

    def role(self) -> str:
        return self.cli("ROLE").split("\n", 1)[0].strip()


@dataclass
class RedisCluster:
    nodes: list[RedisNode] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="llm-rcluster-")))

    @property
    def url(self) -> str:
        """REDIS_URL for REDIS_MODE=cluster: every node as a seed."""
        return "redis://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, size: int = 6) -> None:
        (self.root / "owner").write_text(str(os.getpid()))  # see rabbit_node.reap_leftovers
        for port in cluster_ports(size):
            node_dir = self.root / str(port)
            node_dir.mkdir()
            self.nodes.append(RedisNode(port, node_dir))
        for node in self.nodes:
            node.start()
        self._record_pids()
        for node in self.nodes:
            _wait_for(lambda n=node: n.cli("PING").strip() == "PONG", "node up")
        created = subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if created.returncode != 0:
            raise RuntimeError(f"cluster create failed: {created.stdout}{created.stderr}")
        self.wait_healthy()

    def masters(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.process is not None and n.role() == "master"]

    def master_of(self, key: str) -> RedisNode:
        """The node that serves `key`'s slot now."""
        slot = int(self.nodes[0].cli("CLUSTER", "KEYSLOT", key).strip())
        for node in self.masters():
            if _serves(node, slot):
                return node
        raise RuntimeError(f"no master serves slot {slot}")

    def wait_healthy(self) -> None:
        """Every running node sees every slot served, and every replica is in sync with its
        master (a replica that never synced is not promoted)."""
        for node in self.nodes:
            if node.process is not None:
                _wait_for(lambda n=node: "cluster_state:ok" in n.cli("CLUSTER", "INFO"),
                          "cluster state ok")
                _wait_for(lambda n=node: _in_sync(n), "replicas in sync")

    def wait_promoted(self) -> None:
        """After a master was killed: until one of its replicas serves its slots."""
        _wait_for(lambda: len(self.masters()) == len(self.nodes) // 2, "a replica promoted")
        self.wait_healthy()

    def restart(self, node: RedisNode) -> None:
        """Start a killed node again on its directory: it rejoins (as a replica now)."""
        node.start()
        self._record_pids()
        _wait_for(lambda: node.cli("PING").strip() == "PONG", "node up")
        self.wait_healthy()

    def _record_pids(self) -> None:
        """`<pid> <port>` per running node, for a later session's reaper (redis-server
        rewrites its command line, so its directory cannot be found there)."""
        (self.root / "pids").write_text("".join(
            f"{n.process.pid} {n.port}\n" for n in self.nodes if n.process is not None))

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def _in_sync(node: RedisNode) -> bool:
    info = node.cli("INFO", "replication")
    return "role:master" in info or (
        "master_link_status:up" in info and "master_sync_in_progress:0" in info)


def _serves(node: RedisNode, slot: int) -> bool:
    """Whether `node` owns `slot` (CLUSTER NODES: the 'myself' line lists its slot ranges)."""
    for line in node.cli("CLUSTER", "NODES").splitlines():
        parts = line.split()
        if len(parts) > 8 and "myself" in parts[2]:
            for piece in parts[8:]:
                if piece.startswith("["):
                    continue
                low, _, high = piece.partition("-")
                if int(low) <= slot <= int(high or low):
                    return True
    return False


def _wait_for(check: object, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis cluster: timed out waiting for {what}")
        time.sleep(0.05)
