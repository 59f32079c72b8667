"""`llm-consumer cache {invalidate,warm,stats}` and `llm-consumer usage`.

They talk to Redis directly (the cache generations and usage hashes every replica shares), so
they need neither the broker nor a running service. `cache warm` generates through the same
pipeline as the service (cache, single-flight, rate limits, usage) with the configured text
provider, as `run` builds it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llm_consumer.auth import Principal
from llm_consumer.client import build_request
from llm_consumer.errors import Deferred, ServiceError
from llm_consumer.events.catalog import EVENTS
from llm_consumer.events.envelope import Envelope
from llm_consumer.events.requests import ContentKind, ContentRequested, ImageKind, ImageRequested
from llm_consumer.logging import configure_logging
from llm_consumer.settings import Settings, SettingsError, load_settings
from llm_consumer.store.client import RedisClient, RedisMisconfigured, open_redis, verify_redis
from llm_consumer.store.jobs import Claim
from llm_consumer.store.keys import Keys
from llm_consumer.store.usage import last_days, read_usage, today

cache_app = typer.Typer(no_args_is_help=True, help="Invalidate, warm and inspect the cache.")
console = Console()
err = Console(stderr=True)
T = TypeVar("T")
KINDS = frozenset(k.value for k in ContentKind) | frozenset(k.value for k in ImageKind)
WARMER = Principal("cache-warm", frozenset({"llm:content", "llm:image", "llm:admin"}))

Item = tuple[Envelope, ContentRequested | ImageRequested]


def _settings() -> Settings:
    try:
        return load_settings(need_secret=False)
    except SettingsError as error:
        err.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(2) from None


def _with_redis(settings: Settings, work: Callable[[RedisClient], Awaitable[T]]) -> T:
    async def run() -> T:
        redis = open_redis(settings.redis_url, settings.redis_mode,
                           sentinel_master=settings.redis_sentinel_master, timeout_s=10)
        try:
            await verify_redis(redis, settings.redis_mode, settings.redis_url)
            return await work(redis)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(run())
    except RedisMisconfigured as error:
        err.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(2) from None
    except RedisError as error:
        err.print(f"[bold red]error:[/] Redis at {settings.redis_url}: {error}")
        raise typer.Exit(1) from None


@cache_app.command("invalidate")
def invalidate(kind: Annotated[str | None, typer.Option(help="only this request kind")] = None,
               ) -> None:
    """Drop cached answers, of every kind or of one, on every replica at once."""
    if kind is not None and kind not in KINDS:
        err.print(f"[bold red]error:[/] unknown kind {kind!r}; one of {', '.join(sorted(KINDS))}")
        raise typer.Exit(2)
    settings = _settings()

    async def work(redis: RedisClient) -> int | None:
        from llm_consumer.app import build_guard

        return await build_guard(settings, redis).cache.invalidate(kind)

    removed = _with_redis(settings, work)
    console.print(f"invalidated {kind or 'every kind'}: {removed} cached answer(s) removed")


@cache_app.command("stats")
def stats() -> None:
    """Cached answers per kind, their generation, and today's requests and cache hits."""
    settings = _settings()

    async def work(redis: RedisClient) -> tuple[Counter[str], dict[str, int], list[Any]]:
        from llm_consumer.app import build_guard

        entries, generations = await build_guard(settings, redis).cache.stats()
        return entries, generations, await read_usage(redis, Keys(settings.redis_prefix),
                                                      [today()])

    entries, generations, rows = _with_redis(settings, work)
    table = Table(title=f"response cache ({settings.redis_prefix}), generation of all kinds "
                        f"{generations.get('*', 0)}")
    for column in ("kind", "entries", "generation", "requests today", "hits today"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for kind in sorted(set(entries) | set(generations) | {r.kind for r in rows} - {"*"}):
        mine = [r for r in rows if r.kind == kind]
        table.add_row(kind, str(entries.get(kind, 0)), str(generations.get(kind, 0)),
                      str(sum(r.requests for r in mine)), str(sum(r.cache_hits for r in mine)))
    console.print(table)


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
            err.print(f"[bold red]error:[/] {path}: {problem}")
        raise typer.Exit(2)
    return items


@cache_app.command("warm")
def warm(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                         help="JSON lines: one request `data` (with its kind)")],
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="requests at once")] = 4,
    refresh: Annotated[bool, typer.Option(help="generate again even when cached")] = False,
) -> None:
    """Fill the cache: generate every request of FILE through the service's own pipeline."""
    settings = _settings()
    configure_logging("WARNING")  # the progress bar has the terminal
    items = _read_items(file)
    if refresh:
        items = [(e, d.model_copy(update={"cache": False})) for e, d in items]
    outcomes = _with_redis(settings, lambda redis: _warm(settings, redis, items, concurrency))
    console.print(f"{len(items)} request(s): {outcomes['generated']} generated, "
                  f"{outcomes['cached']} already cached, {outcomes['failed']} failed")
    if outcomes["failed"]:
        raise typer.Exit(1)


async def _warm(settings: Settings, redis: RedisClient, items: list[Item],
                concurrency: int) -> Counter[str]:
    from llm_consumer.app import build_guard, build_text_provider, context_windows
    from llm_consumer.handlers.base import Deps, Request
    from llm_consumer.handlers.limits import MeteredText
    from llm_consumer.handlers.pipeline import guarded
    from llm_consumer.handlers.routes import route

    guard = build_guard(settings, redis)
    text = build_text_provider(settings, observe=guard.observe)
    deps = Deps(text=MeteredText(text, guard), windows=context_windows(settings, text),
                guard=guard)
    outcomes: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)

    async def quiet(event_type: str, data: BaseModel) -> None:
        """Notices (rate-limit warnings) have nobody to go to here."""

    async def one(envelope: Envelope, data: ContentRequested | ImageRequested) -> str:
        handler = guarded(route(envelope.type, data))
        while True:
            request = Request(envelope=envelope, data=data, principal=WARMER, attempt=0,
                              emit=quiet)
            try:
                replies = await handler(request, deps)
            except Deferred as deferred:  # over a rate limit: wait here, as long as it takes
                await asyncio.sleep(deferred.retry_after_s)
                continue
            except ServiceError as error:
                err.print(f"[red]{data.kind.value}[/] {envelope.id}: {error.code}: {error.message}")
                return "failed"
            if isinstance(replies, Claim):  # never: warming makes no job-ledger claims
                return "cached"
            return "cached" if replies and getattr(replies[0].data, "cached", False) else (
                "generated")

    columns = (TextColumn("warming the cache"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[done]}"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("warm", total=len(items), done="")

            async def tracked(envelope: Envelope, data: ContentRequested | ImageRequested) -> None:
                async with gate:
                    outcomes[await one(envelope, data)] += 1
                progress.update(bar, advance=1, done=", ".join(
                    f"{n} {k}" for k, n in sorted(outcomes.items())))

            await asyncio.gather(*(tracked(e, d) for e, d in items))
    finally:
        await text.aclose()
    return outcomes


def usage(
    day: Annotated[str | None, typer.Option(help="YYYY-MM-DD (UTC); default today")] = None,
    days: Annotated[int, typer.Option(min=1, max=90, help="this many days up to --day")] = 1,
    user: Annotated[str | None, typer.Option(help="only this user")] = None,
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
) -> None:
    """Requests, tokens, estimated cost and cache hits per day, model, kind and user."""
    settings = _settings()
    try:
        chosen = last_days(days, day)
    except ValueError:
        err.print(f"[bold red]error:[/] --day must be YYYY-MM-DD, not {day!r}")
        raise typer.Exit(2) from None
    rows = _with_redis(settings, lambda redis: read_usage(
        redis, Keys(settings.redis_prefix), chosen, user=user, model=model))
    span = chosen[0] if days == 1 else f"{chosen[-1]} .. {chosen[0]}"
    table = Table(title=f"usage {span}", show_footer=bool(rows))
    numbers = ("requests", "prompt_tokens", "completion_tokens", "cost_usd", "cache_hits")
    for column in ("day", "model", "kind", "user"):
        table.add_column(column, footer="total" if column == "day" else "")
    for column in numbers:
        total = sum(getattr(r, column) for r in rows)
        table.add_column(column.replace("_", " "), justify="right", footer=_cell(column, total))
    for row in rows:
        table.add_row(row.day, row.model, row.kind, row.user,
                      *(_cell(column, getattr(row, column)) for column in numbers))
    console.print(table if rows else f"no usage recorded for {span}")


def _cell(column: str, value: float) -> str:
    if column != "cost_usd":
        return f"{int(value):,}"
    return f"${value:,.4f}" if value >= 0.01 else f"${value:.6f}"
