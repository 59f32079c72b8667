"""Figures into verdicts: medians, percentiles, the table (terminal and Markdown)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rich.table import Table

PASS, MISS, INFO = "pass", "MISS", "info"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (`share` in 0..1) of `values`."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


@dataclass(frozen=True, slots=True)
class Row:
    benchmark: str
    metric: str
    median: str
    versus: str = ""  # a ratio and/or the target
    verdict: str = INFO
    value: float | None = None  # the median as a number, for the JSON

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def at_least(value: float, target: float) -> str:
    return PASS if value >= target else MISS


def at_most(value: float, target: float) -> str:
    return PASS if value <= target else MISS


def table(rows: Sequence[Row], title: str) -> Table:
    out = Table(title=title, title_justify="left")
    for name, justify in (("benchmark", "left"), ("metric", "left"), ("median", "right"),
                          ("ratio / target", "left"), ("verdict", "center")):
        out.add_column(name, justify=justify)  # type: ignore[arg-type]
    colour = {PASS: "green", MISS: "bold red", INFO: "dim"}
    for row in rows:
        out.add_row(row.benchmark, row.metric, row.median, row.versus,
                    f"[{colour[row.verdict]}]{row.verdict}[/]")
    return out


def markdown(rows: Sequence[Row]) -> str:
    lines = ["| benchmark | metric | median | ratio / target | verdict |",
             "| --- | --- | ---: | --- | --- |"]
    lines += [f"| {r.benchmark} | {r.metric} | {r.median} | {r.versus} | {r.verdict} |"
              for r in rows]
    return "\n".join(lines) + "\n"
