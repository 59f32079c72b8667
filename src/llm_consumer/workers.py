"""`run --workers N`: N service processes under one supervisor, for more than one core.

Each worker is `python -m llm_consumer run --workers 1` with its own event loop, broker and
Redis connections; they share only the work queue (the broker spreads deliveries) and Redis
(rate limits, cache and the job ledger are global there). The supervisor:
- names each worker `<INSTANCE_ID>-<n>` (job claims, heartbeats and control queues stay
  distinct) and gives it `METRICS_PORT + n` when metrics are on;
- forwards every SIGTERM/SIGINT it gets to every worker (they run in a process group of their
  own, so a terminal's Ctrl-C reaches them once, through here): one signal drains all, a
  second one exits them at once, as for a single process;
- stops the others when one worker ends on its own, so that the orchestrator restarts the
  whole service rather than keep it running short of a worker;
- merges the workers' health files into `HEALTH_FILE` (worst status, oldest heartbeat, summed
  counts), so `llm-consumer probe` reads one view; `llm-consumer health` lists every worker's
  heartbeat as an instance of its own.
Its exit code is 0 when every worker drained cleanly, otherwise the first failing worker's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import structlog

from llm_consumer.settings import Settings

log = structlog.get_logger("llm_consumer.workers")

STATUS_ORDER = ("ok", "disabled", "degraded", "down")
PR_SET_PDEATHSIG = 1


def worker_count(requested: int) -> int:
    """`requested`, where 0 means one per core this process may run on."""
    if requested > 0:
        return requested
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def worker_env(settings: Settings, index: int) -> dict[str, str]:
    """The environment of worker `index`: its own name, health file and metrics port."""
    env = dict(os.environ)
    env.update({"WORKERS": "1", "INSTANCE_ID": f"{settings.instance_id}-{index}"})
    if settings.health_file:
        env["HEALTH_FILE"] = worker_health_file(settings.health_file, index)
    if settings.metrics_port is not None:
        env["METRICS_PORT"] = str(settings.metrics_port + index)
    return env


def worker_health_file(path: str, index: int) -> str:
    return f"{path}.{index}"


def _die_with_parent() -> None:
    """In the child, before exec: a SIGTERM when the supervisor dies, even by SIGKILL, so no
    worker outlives it (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Supervisor:
    settings: Settings
    count: int
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stopping: bool = False

    def start(self) -> None:
        for index in range(self.count):
            self.children.append(subprocess.Popen(
                [sys.executable, "-m", "llm_consumer", "run", "--workers", "1"],
                env=worker_env(self.settings, index), process_group=0,
                preexec_fn=_die_with_parent))
        log.info("workers.started", workers=self.count,
                 pids=[child.pid for child in self.children])

    def forward(self, signum: int, _frame: FrameType | None = None) -> None:
        """Every signal goes to every worker still running."""
        self.stopping = True
        for child in self.children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)

    def wait(self) -> int:
        """Until every worker has exited; the supervisor's exit code."""
        health_every_s = min(1.0, self.settings.heartbeat_every_s)
        codes: dict[int, int] = {}
        while len(codes) < len(self.children):
            for index, child in enumerate(self.children):
                code = child.poll()
                if code is None or index in codes:
                    continue
                codes[index] = 128 - code if code < 0 else code
                if not self.stopping:
                    log.error("workers.worker_exited", worker=index, code=codes[index])
                    self.forward(signal.SIGTERM)
            if self.settings.health_file and not self.stopping:
                merge_health(self.settings.health_file, self.count)
            time.sleep(health_every_s)
        failed = [code for _, code in sorted(codes.items()) if code != 0]
        log.info("workers.stopped", codes=[codes[i] for i in range(len(self.children))])
        return failed[0] if failed else 0


def supervise(settings: Settings, count: int) -> int:
    supervisor = Supervisor(settings, count)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, supervisor.forward)
    supervisor.start()
    return supervisor.wait()


def merge_health(path: str, count: int) -> bool:
    """Write the workers' health files as one (atomically); False while one is missing or
    being written."""
    states: list[dict[str, Any]] = []
    for index in range(count):
        try:
            states.append(orjson.loads(Path(worker_health_file(path, index)).read_bytes()))
        except (OSError, orjson.JSONDecodeError):
            return False
    merged = merged_health(states)
    temporary = Path(f"{path}.tmp")
    temporary.write_bytes(orjson.dumps(merged))
    os.replace(temporary, path)
    return True


def merged_health(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One view of every worker: the oldest heartbeat (a stuck worker makes it stale), the
    worst status of each component, summed counts, the highest p95."""
    def worst(statuses: list[str]) -> str:
        return max(statuses, key=lambda s: STATUS_ORDER.index(s) if s in STATUS_ORDER else 3)

    names = sorted({name for state in states for name in state.get("components", {})})
    components = {name: worst([str(s.get("components", {}).get(name, "down"))
                               for s in states]) for name in names}
    counts = [state.get("metrics", {}) for state in states]
    processed = sum(int(c.get("processed", 0)) for c in counts)
    errors = sum(float(c.get("error_rate", 0.0)) * int(c.get("processed", 0)) for c in counts)
    return {
        "time": min(float(state.get("time", 0)) for state in states),
        "instance": ",".join(str(state.get("instance")) for state in states),
        "status": worst([str(state.get("status", "down")) for state in states]),
        "components": components,
        "metrics": {"in_flight": sum(int(c.get("in_flight", 0)) for c in counts),
                    "processed": processed,
                    "error_rate": round(errors / processed, 4) if processed else 0.0,
                    "p95_ms": max(float(c.get("p95_ms", 0.0)) for c in counts)},
        "workers": states,
    }
