"""A RabbitMQ node of the test's own, to kill and restart without touching the shared broker.

It runs from the installed server (`/usr/lib/rabbitmq/bin`, the scripts behind the Debian
wrappers, which would `su` to the rabbitmq user and read /etc/rabbitmq) with everything of its
own: node name, AMQP and distribution ports on 127.0.0.1, data and log directories, config and
env files, an empty plugin list (so no management listener wants port 15672) and an Erlang
cookie in its own HOME. Messages and durable queues live in its data directory, so a restart
on the same directory keeps what was confirmed before a `kill -9`.

`RabbitCluster` starts three such nodes with one Erlang cookie and joins the second and third
to the first (`rabbitmqctl join_cluster`): quorum queues then keep a replica on every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.ports import free_port

SBIN = Path("/usr/lib/rabbitmq/bin")
BOOT_TIMEOUT_S = 90.0



def available() -> bool:
    return (SBIN / "rabbitmq-server").exists() and (SBIN / "rabbitmqctl").exists()


class RabbitNode:
    def __init__(self, *, cookie: str | None = None, prefix: str = "faults") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="llm-rabbit-"))
        self.pid: int | None = None
        self.starts = 0
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "owner").write_text(str(os.getpid()))  # see reap_leftovers
        if cookie is not None:  # nodes of one cluster share it (and so do their rabbitmqctl)
            cookie_file = self.dir / ".erlang.cookie"
            cookie_file.write_text(cookie)
            cookie_file.chmod(0o400)
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **keep,
            "HOME": str(self.dir),  # the Erlang cookie of this node and of its rabbitmqctl
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    # -- blocking (fixture set-up and tear-down) ----------------------------------------------

    def ctl(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SBIN / "rabbitmqctl"), "-q", "-n", self.name, *args],
                              env=self.env, capture_output=True, text=True, timeout=timeout_s)

    def start(self) -> None:
        """Boot (or boot again on the same data directory) and wait until it serves AMQP.

        A boot right after a `kill -9` can fail inside Mnesia ("Cannot rename disk_log file
        ... PREVIOUS.LOG enoent", a known Mnesia race when it was killed while switching its
        transaction log); the node then exits. An operator would start it again, and so does
        this: once, after killing what is left of the failed boot."""
        try:
            self._boot()
        except RuntimeError as failed:
            for pid in _pids_with(str(self.dir)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            print(f"node {self.name}: first boot failed, booting again: {failed}")
            self._boot()
        self.pid = self._read_pid()
        self.starts += 1

    def _boot(self) -> None:
        (self.dir / "node.pid").unlink(missing_ok=True)
        # From its own directory: Mnesia writes its core dumps to the working directory.
        subprocess.run([str(SBIN / "rabbitmq-server"), "-detached"], env=self.env, check=True,
                       cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60)
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while not self._serving():
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.2)
        done = self.ctl("await_startup", "--timeout", "60", timeout_s=90)
        if done.returncode != 0:
            raise RuntimeError(f"await_startup: {done.stdout}{done.stderr}\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the node (hard when it does not stop) and delete its directory."""
        if self.pid is not None and _alive(self.pid):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.ctl("stop", timeout_s=60)
            deadline = time.monotonic() + 15
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
        self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        found = sorted((self.dir / "log").glob("*.log"))
        if not found:
            return "(no log)"
        return "\n".join(found[0].read_text(errors="replace").splitlines()[-lines:])

    def _serving(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port),
                                                                     timeout=0.2):
            return True
        return False

    def _read_pid(self) -> int:
        pid_file = self.dir / "node.pid"
        if pid_file.exists() and pid_file.read_text().strip().isdigit():
            return int(pid_file.read_text().strip())
        found = self.ctl("eval", "os:getpid().")  # prints "12345" with the quotes
        return int(found.stdout.strip().strip('"'))

    # -- from a running test (the event loop keeps serving while the node boots) ---------------

    async def kill(self) -> None:
        """`kill -9` the node's beam.smp and wait until it is gone."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        while _alive(self.pid):
            await asyncio.sleep(0.05)

    async def restart(self) -> None:
        await asyncio.to_thread(self.start)

    async def close_all_connections(self, reason: str = "test: fault injection") -> None:
        done = await asyncio.to_thread(self.ctl, "close_all_connections", reason)
        assert done.returncode == 0, done.stdout + done.stderr


def reap_leftovers(pattern: str = "llm-rabbit-*") -> None:
    """Kill what runs from the directories of a test session that was killed before it could
    stop its nodes (its `owner` process is gone), and delete them. Directories of a session
    still running (this one, or another's) are left alone."""
    for home in Path(tempfile.gettempdir()).glob(pattern):
        owner = home / "owner"
        text = owner.read_text().strip() if owner.exists() else ""
        if not text.isdigit() or _alive(int(text)):
            continue
        pid_file = home / "node.pid"
        text = pid_file.read_text().strip() if pid_file.exists() else ""
        if text.isdigit() and _alive(int(text)) and str(home) in _cmdline(int(text)):
            os.kill(int(text), signal.SIGKILL)
        for pid in _pids_with(str(home)):
            os.kill(pid, signal.SIGKILL)
        pids = home / "pids"  # `<pid> <port>` lines of processes that rename themselves
        for line in (pids.read_text().splitlines() if pids.exists() else []):
            pid, port = (int(part) for part in line.split())
            if _alive(pid) and f":{port}" in _cmdline(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids_with(text: str) -> list[int]:
    """Processes whose command line names `text` (a node's home directory)."""
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and text in _cmdline(int(entry.name))]


class RabbitCluster:
    """Three nodes joined into one cluster; `url` names them all (MESSAGE_HUB_URL syntax)."""

    def __init__(self, size: int = 3) -> None:
        cookie = uuid.uuid4().hex.upper()
        self.nodes = [RabbitNode(cookie=cookie, prefix="cluster") for _ in range(size)]

    @property
    def url(self) -> str:
        return "amqp://guest:guest@" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes) + "/"

    def start(self) -> None:
        """Boot the nodes side by side, then join the others to the first."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.start(), self.nodes))
        first = self.nodes[0].name
        for node in self.nodes[1:]:
            for step in (("stop_app",), ("join_cluster", first), ("start_app",)):
                done = node.ctl(*step, timeout_s=120)
                if done.returncode != 0:
                    raise RuntimeError(f"{node.name} {' '.join(step)}: "
                                       f"{done.stdout}{done.stderr}\n{node.log_tail()}")
        if len(self.running()) != len(self.nodes):
            raise RuntimeError(f"cluster runs {self.running()}")

    def running(self, via: int = 0) -> list[str]:
        """The running nodes, as the node at `via` sees them."""
        status = self.nodes[via].ctl("cluster_status", "--formatter", "json")
        return list(json.loads(status.stdout or "{}").get("running_nodes", []))

    def stop(self) -> None:
        """Stop every node; whatever still runs from their directories is killed."""
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                node.stop()
        for node in self.nodes:
            for pid in _pids_with(str(node.dir)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie left for a parent that is not us counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
