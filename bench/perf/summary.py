"""The table: each benchmark's medians, ratios to B0 and verdicts against the issue's targets."""

from __future__ import annotations

from typing import Any

from perf.loadgen import Window
from perf.report import INFO, MISS, PASS, Row, at_least, at_most, median
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
            f"{full_ratio:.2f} x B0 (target >= 0.5)", at_least(full_ratio, 0.5), full_ratio),
        Row("service, cache hit", "throughput", f"{hit:.0f} req/s",
            f"{hit_ratio:.2f} x B0 (target >= 0.8)", at_least(hit_ratio, 0.8), hit_ratio),
    ]
    no_index = results["without_index"]
    no_index_ratio = median(ratios(no_index["full"], no_index["b0"]))
    no_index_cpu = median([w.cpu_us_per_request for w in no_index["full"]])
    no_index_b0_cpu = median([w.cpu_us_per_request for w in no_index["b0"]])
    rows += [
        Row("service, full path, QUEUE_INDEX=false", "throughput",
            f"{median([w.throughput for w in no_index['full']]):.0f} req/s",
            f"{no_index_ratio:.2f} x B0 (the index on: {full_ratio:.2f})", value=no_index_ratio),
        Row("cost, full path, QUEUE_INDEX=false", "CPU per request", f"{no_index_cpu:.0f} µs",
            f"{no_index_cpu / no_index_b0_cpu:.1f} x B0 (the index on: {cpu['full']:.0f} µs)",
            value=no_index_cpu),
    ]
    slow = results["concurrency"]
    for level, windows in slow["runs"].items():
        efficiency = median([w.throughput / (level / PROVIDER_DELAY_S) for w in windows])
        top = level == max(slow["runs"])
        rows.append(Row(f"concurrency, provider {PROVIDER_DELAY_S:g} s, {level} in flight",
                        f"throughput / (in flight / {PROVIDER_DELAY_S:g} s)", f"{efficiency:.3f}",
                        f"{median([w.throughput for w in windows]):.0f} req/s (target >= 0.9)",
                        at_least(efficiency, 0.9) if top else INFO, efficiency))
    ceiling = median([w.throughput / (max(slow["runs"]) / PROVIDER_DELAY_S)
                      for w in slow["b0_slow"]])
    rows.append(Row(f"B0 waiting {PROVIDER_DELAY_S:g} s, {max(slow['runs'])} in flight",
                    f"throughput / (in flight / {PROVIDER_DELAY_S:g} s)", f"{ceiling:.3f}",
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
            f"{cpu['full'] / cpu['b0']:.1f} x B0 (target <= 2000 µs)",
            at_most(cpu["full"], 2000.0), cpu["full"]),
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
            f"{rss:.0f} MB", "target <= 150 MB", at_most(rss, 150.0), rss),
        Row("cost, idle after start", "RSS of the service",
            f"{results['service_rss_at_start_mb']:.0f} MB", "reference",
            value=results["service_rss_at_start_mb"]),
    ]
    rows += platform_rows(results, cpu["b0"])
    every = [w for group in (*runs.values(), *no_index.values(), *slow["runs"].values(),
                             slow["b0_slow"]) for w in group]
    failed = sum(w.failed for w in every) + sum(r["failed"] for r in lat["reps"])
    lost = sum(w.lost for w in every) + sum(r["lost"] for r in lat["reps"])
    extra = [results["streaming"], *results["platform"].values()]
    failed += sum(int(r["failed"]) for r in extra)
    lost += sum(int(r["lost"]) for r in extra)
    rows.append(Row("every run", "requests failed / never answered", f"{failed} / {lost}",
                    "must be 0 / 0 for the figures to count", at_most(failed + lost, 0),
                    float(failed + lost)))
    return rows


def platform_rows(results: dict[str, Any], b0_cpu: float) -> list[Row]:
    """The platform-rate runs (B0 and each worker count) and the streaming run."""
    stream = results["streaming"]
    rows = [
        Row("streaming, 500-token answer", "content.progress events per answer",
            f"{stream['events_per_answer']:.1f}", "target <= 10",
            at_most(stream["events_per_answer"], 10.0), stream["events_per_answer"]),
        Row("streaming, 500-token answer", "CPU per streamed request",
            f"{stream['cpu_us_per_request']:.0f} µs",
            f"{stream['cpu_us_per_request'] / b0_cpu:.1f} x B0",
            value=stream["cpu_us_per_request"]),
    ]
    runs = results["platform"]
    b0 = runs["b0"]
    rows.append(Row(f"B0 waiting {PROVIDER_DELAY_S:g} s, open loop", f"at {b0['offered']:g} req/s",
                    f"{b0['throughput']:.0f} req/s, p50 / p99 {b0['added_p50_ms']:.1f} / "
                    f"{b0['added_p99_ms']:.1f} ms", f"{b0['cpu_us_per_request']:.0f} µs CPU/req; "
                    "reference", value=b0["throughput"]))
    held = [r for key, r in runs.items() if key != "b0" and r["lost"] == 0 and r["failed"] == 0
            and r["throughput"] >= 0.97 * r["offered"] and r["added_p99_ms"] <= 100.0]
    fewest = min((r["workers"] for r in held), default=None)
    for key, run in runs.items():
        if key == "b0":
            continue
        ok = run in held
        rows += [
            Row(f"platform rate, {run['workers']} worker(s)",
                f"held of {run['offered']:g} req/s offered ({run['seconds']:g} s, provider 5 s)",
                f"{run['throughput']:.1f} req/s",
                f"{run['completed']}/{run['sent']} answered, {run['failed']} failed, "
                f"{run['lost']} lost", PASS if ok and run["workers"] == fewest else
                (INFO if fewest is not None else MISS), run["throughput"]),
            Row(f"platform rate, {run['workers']} worker(s)", "added latency p50 / p99",
                f"{run['added_p50_ms']:.1f} / {run['added_p99_ms']:.1f} ms",
                "target p99 <= 100 ms", at_most(run["added_p99_ms"], 100.0),
                run["added_p99_ms"]),
            Row(f"platform rate, {run['workers']} worker(s)", "CPU per request",
                f"{run['cpu_us_per_request']:.0f} µs",
                f"{run['cpu_us_per_request'] / b0['cpu_us_per_request']:.1f} x B0 at the same "
                f"rate; {run['cpu_share']:.0%} of a core", value=run["cpu_us_per_request"]),
            Row(f"platform rate, {run['workers']} worker(s)", "peak RSS per worker process",
                " / ".join(f"{mb:.0f}" for mb in run["peak_rss_mb"]) + " MB",
                "target <= 150 MB", at_most(max(run["peak_rss_mb"]), 150.0),
                max(run["peak_rss_mb"])),
        ]
    return rows
