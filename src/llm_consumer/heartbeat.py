"""Liveness: the instance's Redis lease, `service.heartbeat` events, a probe file and gauges."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson
import structlog

from llm_consumer import metrics
from llm_consumer.events import catalog
from llm_consumer.events.results import HeartbeatMetrics, ServiceHeartbeat, SloShare
from llm_consumer.providers.breaker import BreakerBoard, State

log = structlog.get_logger(__name__)
Status = Literal["ok", "degraded", "down", "disabled"]
# `degraded`: the dead-letter queue is full and dead letters are parked in the longest delay queue
DEAD_LETTER_COMPONENT = "dead-letter-queue"
BREAKER_STATUS: dict[State, Status] = {"closed": "ok", "half_open": "degraded", "open": "down"}


@dataclass(frozen=True, slots=True)
class Probes:
    """What a heartbeat reads; each callable is cheap and never raises."""

    instance: str
    redis_lease: Callable[[], Awaitable[bool]]  # refreshes the lease; False: Redis unreachable
    broker_ok: Callable[[], bool]
    cache_status: Callable[[], Status]
    providers: dict[str, Status]
    in_flight: Callable[[], int]
    processed: Callable[[], int]
    error_rate: Callable[[], float]
    p95_ms: Callable[[], float]
    queue_depths: Callable[[], Awaitable[dict[str, int]]]
    # True while dead letters are parked because the dead-letter queue refuses them
    dead_letters_parked: Callable[[], bool] = lambda: False
    # "model:<provider>/<model>" -> its availability (model_components)
    models: Callable[[], dict[str, Status]] = dict
    request_rate: Callable[[], float] = lambda: 0.0  # settled per second over SLO_WINDOW_S
    slo: Callable[[], dict[str, SloShare]] = dict  # per target class (slo.py)


def model_components(board: BreakerBoard) -> dict[str, Status]:
    """Each text model's availability from its circuit breaker: closed `ok`, half-open (one
    probe call allowed) `degraded`, open (skipped) `down`."""
    return {f"model:{board.provider}/{model}": BREAKER_STATUS[state]
            for model, state in board.states().items()}


def overall(components: dict[str, Status]) -> Literal["ok", "degraded", "down"]:
    if components.get("broker") == "down":
        return "down"
    if any(status in ("down", "degraded") for status in components.values()):
        return "degraded"
    return "ok"


async def beat_once(probes: Probes) -> ServiceHeartbeat:
    redis_ok = await probes.redis_lease()
    cache = probes.cache_status()
    components: dict[str, Status] = {
        "broker": "ok" if probes.broker_ok() else "down",
        "cache": cache if redis_ok else "degraded",
        **{f"provider:{name}": status for name, status in probes.providers.items()},
        DEAD_LETTER_COMPONENT: "degraded" if probes.dead_letters_parked() else "ok",
        **probes.models(),
    }
    with contextlib.suppress(Exception):
        for queue, depth in (await probes.queue_depths()).items():
            metrics.QUEUE_DEPTH.labels(queue).set(depth)
    shares = probes.slo()
    for target, share in shares.items():
        if share.share is not None:
            metrics.SLO_SHARE.labels(target).set(share.share)
    return ServiceHeartbeat(
        instance=probes.instance, status=overall(components), components=components,
        metrics=HeartbeatMetrics(in_flight=probes.in_flight(), processed=probes.processed(),
                                 error_rate=round(probes.error_rate(), 4),
                                 p95_ms=round(probes.p95_ms(), 1),
                                 request_rate=round(probes.request_rate(), 3), slo=shares))


async def run_heartbeats(probes: Probes, publish: Callable[[str, ServiceHeartbeat],
                                                           Awaitable[None]],
                         *, every_s: float, health_file: str | None) -> None:
    """Forever: beat, publish, write the probe file; a failed beat is logged, never fatal."""
    path = Path(health_file) if health_file else None
    while True:
        try:
            beat = await beat_once(probes)
            await publish(catalog.SERVICE_HEARTBEAT, beat)
            if path is not None:
                path.write_bytes(orjson.dumps({"time": time.time(),
                                               **beat.model_dump(mode="json")}))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("heartbeat.failed", exc_info=True)
        await asyncio.sleep(every_s)
