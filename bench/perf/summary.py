"""The table: each benchmark's medians, ratios to B0 and verdicts against the issue's targets."""

from __future__ import annotations

from typing import Any

from perf.loadgen import Window
from perf.report import INFO, Row, at_least, at_most, median
from perf.stack import PROVIDER_DELAY_S


def ratios(numerators: list[Window], denominators: list[Window]) -> list[float]:
    return [a.throughput / b.throughput for a, b in zip(numerators, denominators, strict=True)
            if b.throughput]


def rows_for(results: dict[str, Any]) -> list[Row]:
    runs = results["throughput"]
    b0 = median([w.throughput for w in runs["b0"]])
    full = median([w.throughput for w in runs["full"]])
    hit = median([w.throughput for w in runs["hit"]])
    full_ratio, hit_ratio = median(ratios(runs["full"], runs["b0"])), median(
        ratios(runs["hit"], runs["b0"]))
    cpu = {name: median([w.cpu_us_per_request for w in runs[name]]) for name in runs}
    rows = [
        Row("B0 bare aio-pika echo", "throughput", f"{b0:.0f} req/s", "reference",
            value=b0),
        Row("service, full path", "throughput", f"{full:.0f} req/s",
            f"{full_ratio:.2f} x B0 (target >= 0.40)", at_least(full_ratio, 0.4), full_ratio),
        Row("service, cache hit", "throughput", f"{hit:.0f} req/s",
            f"{hit_ratio:.2f} x B0 (target >= 0.70)", at_least(hit_ratio, 0.7), hit_ratio),
    ]
    slow = results["concurrency"]
    for level, windows in slow["runs"].items():
        efficiency = median([w.throughput / (level / PROVIDER_DELAY_S) for w in windows])
        top = level == max(slow["runs"])
        rows.append(Row(f"concurrency, provider 1 s, {level} in flight",
                        "throughput / (in flight / 1 s)", f"{efficiency:.3f}",
                        f"{median([w.throughput for w in windows]):.0f} req/s (target >= 0.95)",
                        at_least(efficiency, 0.95) if top else INFO, efficiency))
    ceiling = median([w.throughput / (max(slow["runs"]) / PROVIDER_DELAY_S)
                      for w in slow["b0_slow"]])
    rows.append(Row(f"B0 waiting 1 s, {max(slow['runs'])} in flight",
                    "throughput / (in flight / 1 s)", f"{ceiling:.3f}",
                    "this machine's ceiling for the row above", value=ceiling))
    lat = results["latency"]
    p50 = median([r["added_p50_ms"] for r in lat["reps"]])
    p99 = median([r["added_p99_ms"] for r in lat["reps"]])
    b0_p50 = median([r["b0_p50_ms"] for r in lat["reps"]])
    b0_p99 = median([r["b0_p99_ms"] for r in lat["reps"]])
    where = f"at {lat['rate']:.0f} req/s"
    rows += [
        Row("added latency (e2e - provider)", f"p50 {where}", f"{p50:.2f} ms",
            "target <= 2 ms", at_most(p50, 2.0), p50),
        Row("added latency (e2e - provider)", f"p99 {where}", f"{p99:.2f} ms",
            "target <= 10 ms", at_most(p99, 10.0), p99),
        Row("B0 end to end, same rate", "p50 / p99 (broker floor)",
            f"{b0_p50:.2f} / {b0_p99:.2f} ms", "reference", value=b0_p50),
        Row("added latency net of the B0 floor", "p50 / p99",
            f"{p50 - b0_p50:.2f} / {p99 - b0_p99:.2f} ms", "what the service alone adds",
            value=p50 - b0_p50),
    ]
    trips = results["round_trips"]
    before = float(trips["miss_before_total"])
    rss = max(slow["peak_rss_mb"]) if slow["peak_rss_mb"] else float("nan")
    rows += [
        Row("cost, full path", "CPU per request", f"{cpu['full']:.0f} µs",
            f"{cpu['full'] / cpu['b0']:.1f} x B0", value=cpu["full"]),
        Row("cost, cache hit", "CPU per request", f"{cpu['hit']:.0f} µs",
            f"{cpu['hit'] / cpu['b0']:.1f} x B0", value=cpu["hit"]),
        Row("cost, B0", "CPU per request", f"{cpu['b0']:.0f} µs", "reference",
            value=cpu["b0"]),
        Row("cost, full path", "Redis round trips before the provider", f"{before:g}",
            "target <= 1 (" + ", ".join(trips["miss_before_provider"]) + ")",
            at_most(before, 1.0), before),
        Row("cost, full path", "Redis round trips in all",
            f"{trips['miss_total']:g}", f"hit: {trips['hit_total']:g}",
            value=float(trips["miss_total"])),
        Row(f"cost, {max(slow['runs'])} in flight", "peak RSS of the service",
            f"{rss:.0f} MB", "target <= 200 MB", at_most(rss, 200.0), rss),
        Row("cost, idle after start", "RSS of the service",
            f"{results['service_rss_at_start_mb']:.0f} MB", "reference",
            value=results["service_rss_at_start_mb"]),
    ]
    every = [w for group in (*runs.values(), *slow["runs"].values(), slow["b0_slow"])
             for w in group]
    failed = sum(w.failed for w in every) + sum(r["failed"] for r in lat["reps"])
    lost = sum(w.lost for w in every) + sum(r["lost"] for r in lat["reps"])
    rows.append(Row("every run", "requests failed / never answered", f"{failed} / {lost}",
                    "must be 0 / 0 for the figures to count", at_most(failed + lost, 0),
                    float(failed + lost)))
    return rows
