"""Text quality figures: share of answers valid on the first try per kind (embedded model),
and prompt tokens saved by context fitting on oversized contexts.

    .venv/bin/python bench/text_quality.py --samples 3 [--json out.json]

Runs the real handlers and the real embedded model in-process (no broker needed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

import structlog
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from llm_consumer.auth import Principal
from llm_consumer.errors import PermanentFailure
from llm_consumer.events.content import CONTENT_MODELS
from llm_consumer.events.envelope import Envelope
from llm_consumer.events.requests import ContentKind, ContentRequested
from llm_consumer.handlers.base import Deps, Request
from llm_consumer.handlers.text_generation import generate
from llm_consumer.prompts.fitting import Budget, ContextWindows, fit_context
from llm_consumer.prompts.tokens import counter_for
from llm_consumer.providers.local import MODEL_NAME, LocalTextProvider

CONTEXTS: dict[ContentKind, dict[str, Any]] = {
    ContentKind.THEME_APPLY: {"text": "The knight rode into the village at dawn, tired."},
    ContentKind.THEME_ANALYZE: {"content": "A grim keep under a red moon.",
                                "target_theme": "gothic-horror", "elements": ["tone", "mood"]},
    ContentKind.CONTENT_VALIDATE: {"content": {"name": "Mira", "class": "Rogue", "level": 3}},
}
SHEET = {"name": "Mira Thornvale", "race": "Half-Elf", "class": "Rogue", "level": 3,
         "background": "Urchin"}


async def _noop(event_type: str, data: BaseModel) -> None:
    return None


def request_for(kind: ContentKind) -> Request:
    data = ContentRequested(kind=kind, context=CONTEXTS.get(kind, SHEET),
                            theme={"preset": "dark-fantasy"})  # type: ignore[arg-type]
    envelope = Envelope(specversion="1.0", id=str(uuid.uuid4()), source="/bench",
                        type="content.requested", data=data.model_dump(mode="json"))
    return Request(envelope=envelope, data=data, principal=Principal("bench", frozenset()),
                   attempt=0, emit=_noop)


async def first_try_share(samples: int) -> list[dict[str, Any]]:
    provider = LocalTextProvider()
    deps = Deps(text=provider, windows=ContextWindows(
        windows={MODEL_NAME: provider.context_window},
        counters={MODEL_NAME: provider.token_counter}))
    rows = []
    try:
        for kind in ContentKind:
            first = repaired = failed = 0
            started = time.perf_counter()
            for _ in range(samples):
                try:
                    result = await generate(request_for(kind), deps, CONTENT_MODELS[kind])
                except PermanentFailure:
                    failed += 1
                    continue
                first += result.first_try
                repaired += not result.first_try
            rows.append({"kind": kind.value, "samples": samples, "first_try": first,
                         "after_repair": repaired, "failed": failed,
                         "median_s": round((time.perf_counter() - started) / samples, 1)})
    finally:
        await provider.aclose()
    return rows


def fitting_savings() -> list[dict[str, Any]]:
    counter = counter_for("gpt-5-nano")
    rows = []
    for chars in (20_000, 50_000, 200_000):
        notes = ("The party met a hooded stranger who spoke of a vault beneath the city. "
                 * (chars // 70 + 1))[:chars]
        context = {**SHEET, "session_notes": notes, "inventory": [f"item {i}" for i in range(300)]}
        _, report = fit_context(context, fixed_text="x" * 2000,
                                budget=Budget(8192, counter, 900))
        rows.append({"context_chars": chars, "prompt_tokens_before": report.original_tokens,
                     "prompt_tokens_after": report.fitted_tokens,
                     "saved": report.saved_tokens, "max_tokens": report.max_tokens,
                     "steps": len(report.actions)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    console = Console()
    quality = asyncio.run(first_try_share(args.samples))
    table = Table(title=f"embedded model ({MODEL_NAME}): answers valid on the first try")
    for column in ("kind", "samples", "first try", "after repair", "failed", "s / answer"):
        table.add_column(column)
    for row in quality:
        table.add_row(row["kind"], str(row["samples"]), str(row["first_try"]),
                      str(row["after_repair"]), str(row["failed"]), str(row["median_s"]))
    total = sum(r["samples"] for r in quality)
    first = sum(r["first_try"] for r in quality)
    usable = first + sum(r["after_repair"] for r in quality)
    console.print(table)
    console.print(f"first try: {first}/{total} = {first / total:.0%}; "
                  f"usable after one repair: {usable}/{total} = {usable / total:.0%}")
    savings = fitting_savings()
    fit = Table(title="context fitting into gpt-5-nano's 8k window (o200k counts)")
    for column in savings[0]:
        fit.add_column(column)
    for row in savings:
        fit.add_row(*(str(v) for v in row.values()))
    console.print(fit)
    if args.json_path:
        with open(args.json_path, "w") as out:
            json.dump({"quality": quality, "fitting": savings}, out, indent=2)


if __name__ == "__main__":
    main()
