"""`llm-consumer cache {invalidate,warm,stats}` and `llm-consumer usage`.

They work on Redis (the cache generations and usage hashes every replica shares) through the
store's modules, so they need neither the broker nor a running service. `cache warm` is
warming.py's, with a progress bar.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from llm_consumer import warming
from llm_consumer.cli.common import (
    Exit,
    console,
    err,
    fail,
    json_line,
    load,
    run,
    show_rows,
)
from llm_consumer.client import build_request
from llm_consumer.errors import ServiceError
from llm_consumer.events.catalog import EVENTS
from llm_consumer.events.envelope import Envelope
from llm_consumer.events.requests import ContentKind, ContentRequested, ImageKind, ImageRequested
from llm_consumer.logging import configure_logging
from llm_consumer.settings import Settings
from llm_consumer.store.client import RedisClient, open_redis, verify_redis
from llm_consumer.store.keys import Keys
from llm_consumer.store.usage import last_days, read_usage, today
from llm_consumer.warming import Item

cache_app = typer.Typer(no_args_is_help=True, help="Invalidate, warm and inspect the cache.")
T = TypeVar("T")
KINDS = frozenset(k.value for k in ContentKind) | frozenset(k.value for k in ImageKind)
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON Lines: one object per row")]


def with_redis(settings: Settings, work: Callable[[RedisClient], Awaitable[T]]) -> T:
    """Open Redis as the service does, check its mode, run `work`; failures are one line."""
    async def session() -> T:
        redis = open_redis(settings.redis_url, settings.redis_mode,
                           sentinel_master=settings.redis_sentinel_master, timeout_s=10)
        try:
            await verify_redis(redis, settings.redis_mode, settings.redis_url)
            return await work(redis)
        finally:
            await redis.aclose()

    return run(session(), settings)


@cache_app.command("invalidate")
def invalidate(kind: Annotated[str | None, typer.Option(help="only this request kind")] = None,
               ) -> None:
    """Drop cached answers, of every kind or of one, on every replica at once."""
    if kind is not None and kind not in KINDS:
        fail(f"unknown kind {kind!r}; one of {', '.join(sorted(KINDS))}", Exit.USAGE)
    settings = load()

    async def work(redis: RedisClient) -> int | None:
        from llm_consumer.app import build_guard

        return await build_guard(settings, redis).cache.invalidate(kind)

    removed = with_redis(settings, work)
    console.print(f"invalidated {kind or 'every kind'}: {removed} cached answer(s) removed")


@cache_app.command("stats")
def stats(as_json: JsonOpt = False) -> None:
    """Cached answers per kind, their generation, and today's requests and cache hits."""
    settings = load()

    async def work(redis: RedisClient) -> tuple[Counter[str], dict[str, int], list[Any]]:
        from llm_consumer.app import build_guard

        entries, generations = await build_guard(settings, redis).cache.stats()
        return entries, generations, await read_usage(redis, Keys(settings.redis_prefix),
                                                      [today()])

    entries, generations, usage_rows = with_redis(settings, work)
    rows = []
    for kind in sorted(set(entries) | set(generations) | {r.kind for r in usage_rows} - {"*"}):
        mine = [r for r in usage_rows if r.kind == kind]
        rows.append({"kind": kind, "entries": entries.get(kind, 0),
                     "generation": generations.get(kind, 0),
                     "requests_today": sum(r.requests for r in mine),
                     "hits_today": sum(r.cache_hits for r in mine)})
    if as_json:
        for row in rows:
            json_line(row)
        return
    show_rows(f"response cache ({settings.redis_prefix}), generation of all kinds "
              f"{generations.get('*', 0)}",
              ("kind", "entries", "generation", "requests today", "hits today"),
              [[str(v) for v in row.values()] for row in rows],
              right=frozenset({"entries", "generation", "requests today", "hits today"}))


def _read_items(path: Path) -> list[Item]:
    """Every line a request's `data` with its `kind`; a bad line stops the run (exit 2)."""
    items, problems = [], []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = orjson.loads(line)
            envelope = Envelope.model_validate(build_request(str(data.get("kind")), {
                k: v for k, v in data.items() if k != "kind"}))
            model = EVENTS[envelope.type].model
            parsed = model.model_validate(envelope.data)
        except (orjson.JSONDecodeError, AttributeError, ValidationError) as error:
            problems.append(f"line {number}: {str(error).splitlines()[0]}")
            continue
        assert isinstance(parsed, ContentRequested | ImageRequested)
        items.append((envelope, parsed))
    if problems:
        for problem in problems:
            err.print(Text(f"error: {path}: {problem}"), soft_wrap=True)
        raise typer.Exit(int(Exit.USAGE))
    return items


@cache_app.command("warm")
def warm(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                         help="JSON lines: one request `data` (with its kind)")],
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="requests at once")] = 4,
    refresh: Annotated[bool, typer.Option(help="generate again even when cached")] = False,
) -> None:
    """Fill the cache: generate every request of FILE through the service's own pipeline."""
    settings = load()
    configure_logging("WARNING")  # the progress bar has the terminal
    items = _read_items(file)
    if refresh:
        items = [(e, d.model_copy(update={"cache": False})) for e, d in items]
    outcomes = with_redis(settings, lambda redis: _warm(settings, redis, items, concurrency))
    console.print(f"{len(items)} request(s): {outcomes['generated']} generated, "
                  f"{outcomes['cached']} already cached, {outcomes['failed']} failed")
    if outcomes["failed"]:
        raise typer.Exit(int(Exit.FAILED))


async def _warm(settings: Settings, redis: RedisClient, items: list[Item],
                concurrency: int) -> Counter[str]:
    """warming.warm with a progress bar; each failure one line."""
    columns = (TextColumn("warming the cache"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[done]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("warm", total=len(items), done="")

        def done(outcomes: Counter[str]) -> None:
            progress.update(bar, advance=1, done=", ".join(
                f"{n} {k}" for k, n in sorted(outcomes.items())))

        def failed(item: Item, error: ServiceError) -> None:
            envelope, data = item
            err.print(Text(f"{data.kind.value} {envelope.id}: {error.code}: {error.message}"),
                      soft_wrap=True)

        return await warming.warm(settings, redis, items, concurrency, on_done=done,
                                  on_failure=failed)


def usage(
    day: Annotated[str | None, typer.Option(help="YYYY-MM-DD (UTC); default today")] = None,
    days: Annotated[int, typer.Option(min=1, max=90, help="this many days up to --day")] = 1,
    user: Annotated[str | None, typer.Option(help="only this user")] = None,
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Requests, tokens, estimated cost and cache hits per day, model, kind and user."""
    settings = load()
    try:
        chosen = last_days(days, day)
    except ValueError:
        fail(f"--day must be YYYY-MM-DD, not {day!r}", Exit.USAGE)
    rows = with_redis(settings, lambda redis: read_usage(
        redis, Keys(settings.redis_prefix), chosen, user=user, model=model))
    numbers = ("requests", "prompt_tokens", "completion_tokens", "cost_usd", "cache_hits")
    if as_json:
        for row in rows:
            json_line({"day": row.day, "model": row.model, "kind": row.kind, "user": row.user,
                       **{column: getattr(row, column) for column in numbers}})
        return
    span = chosen[0] if days == 1 else f"{chosen[-1]} .. {chosen[0]}"
    if not rows:
        console.print(f"no usage recorded for {span}")
        return
    columns = ("day", "model", "kind", "user", *(c.replace("_", " ") for c in numbers))
    footer = ["total", "", "", "", *(_cell(c, sum(getattr(r, c) for r in rows))
                                    for c in numbers)]
    show_rows(f"usage {span}", columns,
              [[row.day, row.model, row.kind, row.user,
                *(_cell(column, getattr(row, column)) for column in numbers)] for row in rows],
              right=frozenset(c.replace("_", " ") for c in numbers), footer=footer)


def _cell(column: str, value: float) -> str:
    if column != "cost_usd":
        return f"{int(value):,}"
    return f"${value:,.4f}" if value >= 0.01 else f"${value:.6f}"
