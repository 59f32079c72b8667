"""Every performance benchmark in one command: the service against a bare-broker baseline (B0).

    .venv/bin/python bench/run_all.py [--quick] [--reps N] [--profile]
        [--json bench/results/latest.json] [--markdown bench/results/latest.md]

Starts, each as a process of its own on the local RabbitMQ and Redis under fresh names: the
tests' fake OpenAI server (`bench/fake_provider.py`), the real service (`python -m
llm_consumer run`, every rate limit on but out of reach, LOG_LEVEL=WARNING), B0
(`bench/b0_echo.py`) and B0 waiting 5 s per request (a provider's time); the service is
restarted with `--workers 2` for the last run. This process generates the load and reads
the other processes' CPU and memory from /proc; the phases are in `perf/phases.py`, the table
in `perf/summary.py`. Repetitions are interleaved (B0, full, hit, B0, full, hit, ...) and the
table shows medians and per-repetition ratios, never a single run. Everything declared is
removed at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the repo: tests' fake provider

import aio_pika
import orjson
import redis.asyncio as aioredis
from perf.loadgen import LoadGen, Target, Window
from perf.phases import (
    FULL,
    QUICK,
    Plan,
    concurrency,
    console,
    latency,
    profiled,
    round_trips,
    say,
    throughput,
    without_index,
)
from perf.procs import ROOT, load_average, rss_mib
from perf.rates import platform_runs, streaming
from perf.report import markdown, median, table
from perf.stack import HUB_URL, REDIS_URL, Stack
from perf.summary import rows_for

from llm_consumer.collector import collect_by_time, tune_collector


def quiet_broker_logs() -> None:
    """aio-pika logs a traceback whenever the broker closes a connection (the test suite's
    fault injection does, for everyone); the load generator counts reconnects instead."""
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)),
            "memory_gib": round(memory_kib / 1024 / 1024, 1), "kernel": platform.release(),
            "python": platform.python_version()}


async def server_versions() -> dict[str, str]:
    client = aioredis.from_url(REDIS_URL)
    info = await client.info("server")
    await client.aclose()
    connection = await aio_pika.connect(HUB_URL)
    async with connection:
        props = connection.transport.connection.server_properties  # type: ignore[union-attr]
        rabbit = props.get("version", b"?")
    rabbit = rabbit.decode() if isinstance(rabbit, bytes) else str(rabbit)
    return {"redis": str(info.get("redis_version")), "rabbitmq": rabbit}


def serializable(results: dict[str, Any]) -> dict[str, Any]:
    def windows(items: list[Window]) -> list[dict[str, Any]]:
        return [{**{k: v for k, v in asdict(w).items() if k != "latencies"},
                 "throughput": w.throughput, "cpu_us_per_request": w.cpu_us_per_request,
                 "target_cpu_share": w.target_cpu_share,
                 "loadgen_cpu_share": w.loadgen_cpu_share} for w in items]

    out = dict(results)
    for phase in ("throughput", "without_index"):
        out[phase] = {k: windows(v) for k, v in results[phase].items()}
    slow = dict(results["concurrency"])
    slow["runs"] = {str(k): windows(v) for k, v in slow["runs"].items()}
    slow["b0_slow"] = windows(slow["b0_slow"])
    out["concurrency"] = slow
    return out


async def run(plan: Plan, *, with_profile: bool, work_dir: Path) -> dict[str, Any]:
    # This process times every answer: a collection pause here reads as the target's latency,
    # so it collects on the service's schedule (collector.py) instead of CPython's defaults.
    tune_collector()
    collector = asyncio.create_task(collect_by_time())
    results: dict[str, Any] = {"plan": asdict(plan), "machine": machine(),
                               "servers": await server_versions(),
                               "load_average_start": load_average(),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    say(f"load average at start: {results['load_average_start']}")
    say("round trips: counting the service's Redis writes, one request at a time")
    results["round_trips"] = await round_trips(plan.round_trip_requests)
    stack = Stack(work_dir)
    gen = LoadGen(HUB_URL, stack.token)
    try:
        say("starting the fake provider, the service and B0")
        await stack.start()
        assert stack.service is not None and stack.b0 is not None
        await gen.open([stack.names.hub, stack.names.b0_exchange,
                        stack.names.b0_slow_exchange])
        service = Target("service", stack.names.hub, stack.service.pid)
        b0 = Target("B0", stack.names.b0_exchange, stack.b0.pid)
        results["service_rss_at_start_mb"] = rss_mib(service.pid) * 1.048576
        results["throughput"] = await throughput(gen, stack, plan, b0, service)
        rate = 0.5 * median([w.throughput for w in results["throughput"]["full"]])
        results["latency"] = await latency(gen, stack, plan, b0, service, rate)
        if with_profile:
            results["profile"] = await profiled(gen, plan, service, work_dir / "profile.txt")
        assert stack.b0_slow is not None
        b0_slow = Target("B0+5s", stack.names.b0_slow_exchange, stack.b0_slow.pid)
        results["concurrency"] = await concurrency(gen, stack, plan, service, b0_slow)
        say("streaming: 500-token answers streamed in 500 deltas")
        results["streaming"] = await streaming(gen, stack, plan, service)
        say(f"platform rate: {plan.platform_rate:g} req/s for {plan.platform_s:g}s, provider "
            f"5 s; B0, then the service with {plan.platform_workers} workers")
        results["platform"] = await platform_runs(gen, stack, plan, b0_slow)
        say("without the queue index: the service restarted with QUEUE_INDEX=false")
        results["without_index"] = await without_index(gen, stack, plan, b0)
    finally:
        collector.cancel()
        results["redis_unavailable_events"] = stack.degraded_events()
        with contextlib.suppress(Exception):
            await gen.close()
        await stack.close()
        say("cleaned up: processes stopped, queues, exchanges and Redis keys removed")
    if results["redis_unavailable_events"]:
        say(f"[yellow]the service logged redis.unavailable {results['redis_unavailable_events']}"
            " time(s): it ran degraded (cache and shared limits off) for part of the runs[/]")
    results["broker_reconnects"] = gen.reconnects
    if gen.reconnects:
        say(f"[yellow]the broker closed the load generator's connection {gen.reconnects} "
            "time(s) (another process's fault injection?); runs with lost requests say so[/]")
    results["load_average_end"] = load_average()
    say(f"load average at end: {results['load_average_end']}")
    return results


def show_profile(summary: dict[str, Any]) -> None:
    console.print(f"\nprofile of the full path ({summary['samples']} main-thread samples, "
                  "inclusive shares, groups nest):")
    for label, share in summary["groups"]:
        console.print(f"  {share:6.1%}  {label}")
    console.print("  top self time:")
    for frame, share in summary["top_self"]:
        console.print(f"  {share:6.1%}  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (about 4 minutes)")
    parser.add_argument("--reps", type=int, help="interleaved repetitions of each benchmark")
    parser.add_argument("--profile", action="store_true", help="also sample with py-spy")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/latest.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "bench/results/latest.md")
    opts = parser.parse_args()
    quiet_broker_logs()
    plan = QUICK if opts.quick else FULL
    if opts.reps:
        plan = Plan(**{**asdict(plan), "reps": opts.reps, "slow_reps": opts.reps})
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = asyncio.run(run(plan, with_profile=opts.profile, work_dir=opts.json.parent))
    results["seconds"] = round(time.monotonic() - started, 1)
    rows = rows_for(results)
    results["table"] = [row.as_dict() for row in rows]
    info = results["machine"]
    title = (f"llm-consumer performance, {info['cores']} cores ({info['cpu']}), "
             f"RabbitMQ {results['servers']['rabbitmq']}, Redis {results['servers']['redis']}; "
             f"medians of {plan.reps} interleaved repetitions ({plan.slow_reps} of the "
             f"concurrency runs); load average "
             f"{results['load_average_start'][0]:.2f} -> {results['load_average_end'][0]:.2f}")
    console.print()
    console.print(table(rows, title))
    if results.get("profile"):
        show_profile(results["profile"])
    opts.json.write_bytes(orjson.dumps(serializable(results), option=orjson.OPT_INDENT_2
                                       | orjson.OPT_NON_STR_KEYS))
    opts.markdown.write_text(f"{title}\n\n{markdown(rows)}")
    say(f"{results['seconds']:.0f}s; wrote {opts.json} and {opts.markdown}")


if __name__ == "__main__":
    main()
