"""The benchmarks, one function each, run against the stack by `bench/run_all.py`."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from perf import profile
from perf.loadgen import LoadGen, Target, Window, fresh_context, pooled_context
from perf.procs import ROOT, peak_rss_mib, reset_peak_rss
from perf.report import percentile
from perf.stack import PROVIDER_DELAY_S, Stack, delete_index_queue

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


@dataclass(frozen=True, slots=True)
class Plan:
    reps: int = 3
    in_flight: int = 64  # throughput runs: enough to saturate either side
    warmup_s: float = 1.5
    measure_s: float = 5.0
    latency_s: float = 6.0
    levels: tuple[int, ...] = (256, 1000)
    slow_reps: int = 3  # repetitions of the concurrency runs
    slow_warmup_s: float = 2.5  # then until the loop has turned once (the provider's 5 s)
    slow_measure_s: float = 5.0
    max_warmup_s: float = 30.0  # a slow service may need long to turn 1,000 requests once
    hit_pool: int = 256
    round_trip_requests: int = 20
    profile_s: float = 10.0
    platform_rate: float = 167.0  # the platform's 10,000 requests a minute
    platform_s: float = 60.0  # open loop at that rate, the provider answering in 5 s
    platform_workers: tuple[int, ...] = (1, 2)
    stream_in_flight: int = 32
    stream_s: float = 5.0


FULL = Plan()
QUICK = Plan(reps=2, warmup_s=1.0, measure_s=2.5, latency_s=3.0, slow_reps=1,
             slow_warmup_s=2.0, slow_measure_s=3.0, max_warmup_s=12.0, hit_pool=128,
             round_trip_requests=10, profile_s=5.0, platform_s=15.0, stream_s=3.0)


def say(text: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")


def brief(window: Window) -> str:
    note = f", [red]{window.failed} failed[/]" if window.failed else ""
    note += f", [red]{window.lost} lost[/]" if window.lost else ""
    return (f"{window.throughput:8.1f} req/s  {window.cpu_us_per_request:7.0f} µs CPU/req  "
            f"(its CPU {window.target_cpu_share:.0%}, load generator {window.loadgen_cpu_share:.0%}"
            f"{note})")


async def throughput(gen: LoadGen, stack: Stack, plan: Plan, b0: Target,
                     service: Target) -> dict[str, list[Window]]:
    """B0, full path (misses) and cache hits, interleaved, each saturated by a closed loop."""
    say(f"cache: answering {plan.hit_pool} distinct requests once, for the hit runs")
    pool = [f"00000000-0000-4000-8000-{n:012x}" for n in range(plan.hit_pool)]
    warm = await gen.once(service, pool)
    if warm.completed != len(pool) or warm.failed:
        raise RuntimeError(f"cache warm-up: {warm.completed} answers, {warm.failed} failed")
    runs: dict[str, list[Window]] = {"b0": [], "full": [], "hit": []}
    for rep in range(plan.reps):
        for name, target in (("b0", b0), ("full", service), ("hit", service)):
            contexts = pooled_context(pool) if name == "hit" else fresh_context
            calls = await stack.provider_calls()
            window = await gen.closed_loop(target, in_flight=plan.in_flight,
                                           warmup_s=plan.warmup_s, measure_s=plan.measure_s,
                                           contexts=contexts)
            if name == "hit" and (extra := await stack.provider_calls() - calls):
                say(f"[red]warning: {extra} provider calls during a cache-hit run[/]")
            runs[name].append(window)
            say(f"throughput {rep + 1}/{plan.reps} {name:4} {brief(window)}")
            stack.check_alive()
    return runs


async def without_index(gen: LoadGen, stack: Stack, plan: Plan,
                        b0: Target) -> dict[str, list[Window]]:
    """The full path once more with `QUEUE_INDEX=false`, interleaved with B0: what the queue
    index costs (a second delivery of each request and two Redis round trips). The service is
    restarted with one worker and the index's queue deleted, so the broker copies nothing."""
    await stack.start_service(workers=1, settings={"QUEUE_INDEX": "false"})
    await delete_index_queue(stack.names)
    assert stack.service is not None
    service = Target("no index", stack.names.hub, stack.service.pid)
    runs: dict[str, list[Window]] = {"b0": [], "full": []}
    for rep in range(plan.reps):
        for name, target in (("b0", b0), ("full", service)):
            window = await gen.closed_loop(target, in_flight=plan.in_flight,
                                           warmup_s=plan.warmup_s, measure_s=plan.measure_s)
            runs[name].append(window)
            say(f"without the queue index {rep + 1}/{plan.reps} {name:4} {brief(window)}")
            stack.check_alive()
    return runs


async def latency(gen: LoadGen, stack: Stack, plan: Plan, b0: Target, service: Target,
                  rate: float) -> dict[str, Any]:
    """Open loop at `rate` (half the full path's saturation): end-to-end minus provider time,
    per request; B0 at the same rate gives the broker's own floor."""
    await stack.configure_provider(delay_s=0.0, record=True)
    reps: list[dict[str, float]] = []
    for rep in range(plan.reps):
        await stack.provider_timings()  # forget earlier calls
        window = await gen.open_loop(service, rate=rate, seconds=plan.latency_s)
        timings = await stack.provider_timings()
        added = [(e2e - (timings[rid][1] - timings[rid][0])) * 1000
                 for rid, e2e in window.latencies if rid in timings]
        floor = await gen.open_loop(b0, rate=rate, seconds=plan.latency_s)
        b0_ms = [e2e * 1000 for _, e2e in floor.latencies]
        provider_ms = [(out - into) * 1000 for into, out in timings.values()]
        reps.append({
            "requests": len(window.latencies), "matched": len(added), "failed": window.failed,
            "lost": window.lost, "added_p50_ms": percentile(added, 0.5),
            "added_p99_ms": percentile(added, 0.99),
            "provider_p50_ms": percentile(provider_ms, 0.5),
            "b0_p50_ms": percentile(b0_ms, 0.5), "b0_p99_ms": percentile(b0_ms, 0.99),
            "cpu_us_per_request": window.cpu_us_per_request})
        say(f"latency {rep + 1}/{plan.reps} at {rate:.0f} req/s: added p50 "
            f"{reps[-1]['added_p50_ms']:.2f} ms, p99 {reps[-1]['added_p99_ms']:.2f} ms "
            f"({len(added)} requests); B0 p50 {reps[-1]['b0_p50_ms']:.2f} ms, "
            f"p99 {reps[-1]['b0_p99_ms']:.2f} ms")
        stack.check_alive()
    await stack.configure_provider(delay_s=0.0, record=False)
    return {"rate": rate, "reps": reps}


async def concurrency(gen: LoadGen, stack: Stack, plan: Plan, service: Target,
                      b0_slow: Target) -> dict[str, Any]:
    """The provider answers after 5 s; N requests kept in flight: throughput / (N / 5 s).
    B0 waiting 5 s itself, at the top level, shows what this machine allows at all."""
    await stack.configure_provider(delay_s=PROVIDER_DELAY_S)
    top = max(plan.levels)
    runs: dict[int, list[Window]] = {level: [] for level in plan.levels}
    ceiling: list[Window] = []
    peaks: list[float] = []
    resets: list[bool] = []
    for rep in range(plan.slow_reps):
        for level, target in [*((level, service) for level in plan.levels), (top, b0_slow)]:
            measured = target is service and level == top
            if measured:
                resets.append(reset_peak_rss(service.pid))
            window = await gen.closed_loop(target, in_flight=level,
                                           warmup_s=plan.slow_warmup_s,
                                           measure_s=plan.slow_measure_s,
                                           max_warmup_s=plan.max_warmup_s, turns=2)
            if measured:
                peaks.append(peak_rss_mib(service.pid) * 1.048576)  # MiB -> MB
            (runs[level] if target is service else ceiling).append(window)
            efficiency = window.throughput / (level / PROVIDER_DELAY_S)
            say(f"concurrency {rep + 1}/{plan.slow_reps} {target.name:7} {level:5} in flight: "
                f"efficiency {efficiency:.3f}  {brief(window)}; answers per second: "
                f"{' '.join(map(str, window.per_second[:40]))}")
            stack.check_alive()
    await stack.configure_provider(delay_s=0.0)
    return {"runs": runs, "b0_slow": ceiling, "peak_rss_mb": peaks, "peak_reset": all(resets)}


async def round_trips(requests: int) -> dict[str, Any]:
    """Redis round trips per request, counted in a process of its own (see the module)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "perf" / "round_trips.py"), "--requests",
        str(requests), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 300)
    if process.returncode != 0:
        raise RuntimeError(f"round trips failed:\n{err.decode()[-2000:]}")
    return orjson.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


async def profiled(gen: LoadGen, plan: Plan, service: Target,
                   out: Path) -> dict[str, object] | None:
    """One extra full-path run under py-spy (not counted in the figures: sampling slows it)."""
    py_spy = profile.find_py_spy()
    if py_spy is None:
        say("[yellow]--profile: py-spy not found (pip install py-spy, or set PY_SPY)[/]")
        return None
    say(f"profile: {plan.profile_s:g}s of the full path under py-spy")
    recording = asyncio.create_task(profile.record(py_spy, service.pid, plan.profile_s, out))
    await gen.closed_loop(service, in_flight=plan.in_flight, warmup_s=0.5,
                          measure_s=plan.profile_s + 1)
    if not await recording:
        say("[yellow]profile: py-spy failed (ptrace not permitted?)[/]")
        return None
    return profile.summarize(out)
