"""The platform-rate run (167 requests/s, open loop, a 5 s provider) with 1 and N workers,
and the streaming run (events and CPU per streamed 500-token answer)."""

from __future__ import annotations

from typing import Any

from perf.loadgen import LoadGen, Target, Window, streamed_chat
from perf.phases import Plan, brief, say
from perf.procs import children, peak_rss_mib, reset_peak_rss
from perf.report import percentile
from perf.stack import PROVIDER_DELAY_S, Stack


def steady_throughput(window: Window, seconds: float) -> float:
    """Answers a second once the first answers are due (the provider's delay plus a second)
    until sending stopped: what the service holds, not its ramp."""
    start = PROVIDER_DELAY_S + 1.0
    if seconds <= start:
        return float("nan")
    return sum(start <= at < seconds for at in window.arrivals) / (seconds - start)


async def platform_rate(gen: LoadGen, stack: Stack, plan: Plan, target: Target,
                        workers: int) -> dict[str, Any]:
    """Open loop at the platform's rate for `plan.platform_s`, the provider answering in 5 s.
    Added latency = end to end minus the provider's time, per request."""
    await stack.configure_provider(delay_s=PROVIDER_DELAY_S, record=True)
    await stack.provider_timings()  # forget earlier calls
    pids = target.children or (target.pid,)
    resets = [reset_peak_rss(pid) for pid in (target.pid, *target.children)]
    window = await gen.open_loop(target, rate=plan.platform_rate, seconds=plan.platform_s)
    timings = await stack.provider_timings()
    await stack.configure_provider(delay_s=0.0, record=False)
    if timings:
        added = [(e2e - (timings[rid][1] - timings[rid][0])) * 1000
                 for rid, e2e in window.latencies if rid in timings]
    else:  # B0: no provider, it waits the delay itself
        added = [(e2e - PROVIDER_DELAY_S) * 1000 for _, e2e in window.latencies]
    sent = int(plan.platform_rate * plan.platform_s)
    result = {
        "target": target.name, "workers": workers, "offered": plan.platform_rate,
        "seconds": plan.platform_s, "sent": sent, "completed": window.completed,
        "failed": window.failed, "lost": window.lost,
        "throughput": steady_throughput(window, plan.platform_s),
        "added_p50_ms": percentile(added, 0.5), "added_p99_ms": percentile(added, 0.99),
        "cpu_us_per_request": window.cpu_us_per_request,
        "cpu_share": window.cpu_s / window.seconds if window.seconds else 0.0,
        "peak_rss_mb": [peak_rss_mib(pid) * 1.048576 for pid in pids],
        "peak_reset": all(resets)}
    say(f"platform rate {target.name}: {result['throughput']:.1f} req/s held of "
        f"{plan.platform_rate:g} offered, {window.completed}/{sent} answered, "
        f"{window.failed} failed, {window.lost} lost; added p50 {result['added_p50_ms']:.1f} ms "
        f"p99 {result['added_p99_ms']:.1f} ms; {window.cpu_us_per_request:.0f} µs CPU/req "
        f"({result['cpu_share']:.0%} of a core); peak RSS "
        f"{' '.join(f'{mb:.0f}' for mb in result['peak_rss_mb'])} MB")
    return result


async def platform_runs(gen: LoadGen, stack: Stack, plan: Plan,
                        b0_slow: Target) -> dict[str, Any]:
    """B0 waiting 5 s, then the service with each worker count (restarted for each)."""
    runs: dict[str, Any] = {"b0": await platform_rate(gen, stack, plan, b0_slow, 0)}
    for workers in plan.platform_workers:
        if workers != 1 or stack.service is None or not stack.service.alive():
            await stack.start_service(workers=workers)
        assert stack.service is not None
        pid = stack.service.pid
        target = Target(f"service x{workers}", stack.names.hub, pid,
                        children(pid) if workers > 1 else ())
        if workers > 1 and len(target.children) != workers:
            raise RuntimeError(f"expected {workers} workers under {pid}, "
                               f"found {target.children}")
        runs[str(workers)] = await platform_rate(gen, stack, plan, target, workers)
        stack.check_alive()
    return runs


async def streaming(gen: LoadGen, stack: Stack, plan: Plan, service: Target) -> dict[str, Any]:
    """Streamed chat answers of 500 tokens (500 deltas), `stream_in_flight` at once: events
    and CPU per streamed answer, at the PROGRESS_* defaults."""
    await stack.configure_provider(delay_s=0.0)
    window = await gen.closed_loop(service, in_flight=plan.stream_in_flight, warmup_s=1.0,
                                   measure_s=plan.stream_s, envelope=streamed_chat)
    events = window.progress / window.completed if window.completed else float("nan")
    say(f"streaming: {events:.1f} content.progress events per 500-token answer, "
        f"{brief(window)}")
    stack.check_alive()
    return {"events_per_answer": events, "completed": window.completed,
            "failed": window.failed, "lost": window.lost,
            "cpu_us_per_request": window.cpu_us_per_request, "throughput": window.throughput}
