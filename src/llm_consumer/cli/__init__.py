"""The `llm-consumer` command: run, demo, inject, token, dlq, schemas, cache, usage."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import aio_pika
import orjson
import redis.asyncio as aioredis
import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from llm_consumer.auth import mint_token
from llm_consumer.bus import dlq
from llm_consumer.bus.declare import TopologyConflict
from llm_consumer.bus.topology import build_topology
from llm_consumer.cli_cache import cache_app, usage
from llm_consumer.client import NoConsumer, build_request, send_and_wait
from llm_consumer.events import catalog
from llm_consumer.logging import configure_logging
from llm_consumer.settings import Settings, SettingsError, load_settings
from llm_consumer.store.client import RedisMisconfigured

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="LLM service of the D&D character-creator platform (RabbitMQ consumer).")
dlq_app = typer.Typer(no_args_is_help=True, help="Inspect, replay and purge dead letters.")
app.add_typer(dlq_app, name="dlq")
console = Console()
err = Console(stderr=True)
T = TypeVar("T")

SAMPLE_CHARACTER = {
    "name": "Mira Thornvale", "race": "Half-Elf", "class": "Rogue", "level": 3,
    "background": "Urchin", "alignment": "Chaotic Good",
    "traits": "quick-witted, distrustful of nobles",
}
PERMISSIONS_ALL = ("llm:content", "llm:image", "llm:admin")


def _settings(*, need_secret: bool = True) -> Settings:
    try:
        return load_settings(need_secret=need_secret)
    except SettingsError as error:
        err.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(2) from None


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@app.command()
def run() -> None:
    """Consume requests until SIGTERM/SIGINT, then drain and exit 0."""
    settings = _settings()
    configure_logging(settings.log_level)
    from llm_consumer.app import run_service

    try:
        _run(run_service(settings))
    except (TopologyConflict, RedisMisconfigured) as error:  # a queue exists in another form
        err.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def demo(
    timeout: Annotated[float, typer.Option(help="seconds to wait for the result")] = 300,
) -> None:
    """Start the service in this process, inject a sample backstory request, print the result."""
    if not os.environ.get("SECRET_KEY"):
        os.environ["SECRET_KEY"] = secrets.token_urlsafe(64)
        err.print("[dim]SECRET_KEY not set: using a throw-away key for this demo[/]")
    settings = _settings()
    configure_logging("WARNING")
    try:
        code = _run(_demo(settings, timeout))
    except TopologyConflict as error:
        err.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(2) from None
    sys.exit(code)


async def _demo(settings: Settings, timeout: float) -> int:
    from llm_consumer.app import run_service

    stop, ready = asyncio.Event(), asyncio.Event()
    service = asyncio.create_task(run_service(settings, stop=stop, ready=ready))
    with console.status("starting the consumer (loads the embedded model on first use)…"):
        await asyncio.wait({service, asyncio.create_task(ready.wait())},
                           return_when=asyncio.FIRST_COMPLETED)
    if service.done():
        service.result()
    request = build_request("character.backstory", {"context": SAMPLE_CHARACTER,
                                                    "theme": {"preset": "dark-fantasy"}})
    console.print(Panel.fit(json.dumps(request, indent=2), title="request published"))
    try:
        code = await _inject(settings, request, None, timeout, as_json=False, priority=None)
    finally:
        stop.set()
        await service
    return code


@app.command()
def inject(
    kind: Annotated[str, typer.Argument(help="e.g. character.backstory, theme.apply, portrait")],
    context: Annotated[str | None, typer.Option(help="context as a JSON object")] = None,
    context_file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False,
                                                      help="context from a JSON file")] = None,
    prompt: Annotated[str | None, typer.Option(help="prompt (image kinds)")] = None,
    theme: Annotated[str | None, typer.Option(help="theme preset, e.g. dark-fantasy")] = None,
    stream: Annotated[bool, typer.Option(help="ask for content.progress events")] = False,
    cache: Annotated[bool, typer.Option(help="allow a cached result")] = True,
    priority: Annotated[int | None, typer.Option(min=0, max=9)] = None,
    token: Annotated[str | None, typer.Option(help="bearer token; default: minted from "
                                                   "SECRET_KEY")] = None,
    subject: Annotated[str, typer.Option(help="sub claim of a minted token")] = "cli",
    timeout: Annotated[float, typer.Option(help="seconds to wait for the result")] = 120,
    as_json: Annotated[bool, typer.Option("--json", help="print the events as JSON")] = False,
) -> None:
    """Publish one request as a peer would and print the correlated result."""
    settings = _settings(need_secret=token is None)
    data: dict[str, Any] = {"stream": stream, "cache": cache}
    ctx = _load_context(context, context_file)
    if ctx is not None:
        data["context"] = ctx
    if prompt is not None:
        data["prompt"] = prompt
    if theme is not None:
        data["theme"] = {"preset": theme}
    request = build_request(kind, data)
    sys.exit(_run(_inject(settings, request, token, timeout, as_json=as_json,
                          priority=priority)))


def _load_context(context: str | None, context_file: Path | None) -> dict[str, Any] | None:
    raw = context_file.read_text("utf-8") if context_file else context
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        err.print(f"[bold red]error:[/] context is not valid JSON: {error}")
        raise typer.Exit(2) from None
    if not isinstance(value, dict):
        err.print("[bold red]error:[/] context must be a JSON object")
        raise typer.Exit(2)
    return value


async def _inject(settings: Settings, request: dict[str, Any], token: str | None,
                  timeout: float, *, as_json: bool, priority: int | None) -> int:
    token = token or mint_token(settings.secret, subject="cli",
                                permissions=PERMISSIONS_ALL, audience=settings.jwt_audience,
                                issuer=settings.jwt_issuer, ttl_s=int(timeout) + 60)
    progress: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == catalog.CONTENT_PROGRESS:
            progress.append(event["data"]["delta"])
        elif as_json:
            console.print_json(data=event)

    try:
        with console.status(f"waiting for the result of {request['id']}…") as status:
            def track(event: dict[str, Any]) -> None:
                on_event(event)
                if event["type"] == catalog.JOB_STATUS:
                    status.update(f"{request['id']}: {event['data']['state']}…")
                elif progress:
                    status.update(f"streaming: {len(''.join(progress))} characters…")
            outcome = await send_and_wait(
                str(settings.message_hub_url), settings.hub_exchange, request, token=token,
                timeout_s=timeout, priority=priority, on_event=track)
    except NoConsumer as error:
        err.print(f"[bold red]error:[/] {error}")
        return 3
    except TimeoutError:
        err.print(f"[bold red]error:[/] no result for {request['id']} within {timeout:g}s")
        return 2
    final = outcome.final
    assert final is not None
    if not as_json:
        _print_result(final)
    return 1 if final["type"] == catalog.GENERATION_FAILED else 0


def _print_result(event: dict[str, Any]) -> None:
    data = event["data"]
    if event["type"] == catalog.GENERATION_FAILED:
        error = data["error"]
        console.print(Panel(f"{error['message']}\n\ncode: {error['code']}   retryable: "
                            f"{error['retryable']}   attempts: {data['attempts']}",
                            title="[red]generation.failed", border_style="red"))
        return
    body = data.get("text") or json.dumps(
        {k: v for k, v in data.items() if k not in ("request_id", "token_usage")}, indent=2)
    usage = data.get("token_usage") or {}
    footer = (f"model {data.get('model_used')}   tokens {usage.get('total_tokens', '-')}"
              f"{' (estimated)' if usage.get('estimated') else ''}   "
              f"{data.get('duration_ms')} ms   cached {data.get('cached')}")
    console.print(Panel(body, title=f"[green]{event['type']}[/] {data.get('kind', '')}",
                        subtitle=footer, border_style="green"))


@app.command()
def token(
    subject: Annotated[str, typer.Option(help="sub claim")] = "cli",
    scope: Annotated[list[str] | None, typer.Option(help="permission (repeatable)")] = None,
    ttl: Annotated[int, typer.Option(help="lifetime in seconds")] = 300,
) -> None:
    """Print a short-lived token signed with SECRET_KEY (for peers under test)."""
    settings = _settings()
    console.print(mint_token(settings.secret, subject=subject,
                             permissions=scope or PERMISSIONS_ALL, ttl_s=ttl,
                             audience=settings.jwt_audience, issuer=settings.jwt_issuer),
                  soft_wrap=True)


@app.command()
def probe(
    max_age: Annotated[float, typer.Option(help="seconds after which the file is stale")] = 30,
) -> None:
    """Container health check: exit 0 when `run` refreshed HEALTH_FILE recently."""
    settings = _settings(need_secret=False)
    if not settings.health_file:
        err.print("HEALTH_FILE is not set")
        raise typer.Exit(2)
    try:
        state = orjson.loads(Path(settings.health_file).read_bytes())
    except (OSError, orjson.JSONDecodeError) as error:
        err.print(f"unhealthy: cannot read {settings.health_file}: {error}")
        raise typer.Exit(1) from None
    age = time.time() - float(state.get("time", 0))
    if age > max_age:
        err.print(f"unhealthy: last heartbeat {age:.0f}s ago")
        raise typer.Exit(1)
    if state.get("status") == "down":
        err.print(f"unhealthy: {state.get('components')}")
        raise typer.Exit(1)
    counts = state.get("metrics", {})
    console.print(f"{state.get('status')}: {counts.get('in_flight')} in flight, "
                  f"{counts.get('processed')} processed, heartbeat {age:.0f}s ago")


@app.command()
def health(
    wait: Annotated[float, typer.Option(help="seconds to listen for heartbeats")] = 12,
) -> None:
    """Check the broker and Redis, collect every instance's heartbeat and print a table.

    Exits 1 when a component is down, or when no instance sent a heartbeat in time.
    """
    settings = _settings(need_secret=False)
    rows, beats = _run(_health(settings, wait))
    table = Table(title="llm-consumer health")
    for column in ("instance", "component", "status", "in flight", "processed", "error rate",
                   "p95 ms"):
        table.add_column(column)
    for name, status in rows:
        table.add_row("(this check)", name, _colour(status), "", "", "", "")
    for beat in beats:
        data, counts = beat["data"], beat["data"]["metrics"]
        for index, (name, status) in enumerate(sorted(data["components"].items())):
            first = index == 0
            table.add_row(data["instance"] if first else "", name, _colour(status),
                          str(counts["in_flight"]) if first else "",
                          str(counts["processed"]) if first else "",
                          f"{counts['error_rate']:.1%}" if first else "",
                          str(counts["p95_ms"]) if first else "")
    console.print(table)
    statuses = [status for _, status in rows] + [
        s for b in beats for s in b["data"]["components"].values()]
    if not beats:
        err.print(f"no heartbeat from any instance within {wait:g}s")
    if not beats or "down" in statuses:
        raise typer.Exit(1)


def _colour(status: str) -> str:
    return {"ok": "[green]ok", "degraded": "[yellow]degraded", "down": "[red]down"}.get(
        status, f"[dim]{status}")


async def _health(settings: Settings, wait: float) -> tuple[list[tuple[str, str]],
                                                            list[dict[str, Any]]]:
    rows: list[tuple[str, str]] = []
    beats: dict[str, dict[str, Any]] = {}
    try:
        redis = aioredis.from_url(settings.redis_url, socket_connect_timeout=3)
        await redis.ping()
        await redis.aclose()
        rows.append(("redis", "ok"))
    except Exception:
        rows.append(("redis", "down"))
    try:
        connection = await aio_pika.connect(str(settings.message_hub_url), timeout=5)
    except Exception:
        rows.append(("broker", "down"))
        return rows, []
    rows.append(("broker", "ok"))
    async with connection:
        channel = await connection.channel()
        hub = await channel.declare_exchange(settings.hub_exchange, aio_pika.ExchangeType.TOPIC,
                                             durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(hub, routing_key=catalog.SERVICE_HEARTBEAT)
        with console.status(f"listening for heartbeats ({wait:g}s)…"):
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                message = await queue.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.2)
                    continue
                beat = orjson.loads(message.body)
                beats[beat["data"]["instance"]] = beat
    return rows, sorted(beats.values(), key=lambda b: str(b["data"]["instance"]))


@app.command()
def schemas(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("schemas"),
    check: Annotated[bool, typer.Option(help="fail if the files differ from the models")] = False,
) -> None:
    """Write JSON Schemas and the AsyncAPI document of the contract into schemas/."""
    from llm_consumer.events.schema_export import check_schemas, write_schemas

    if check:
        drift = check_schemas(out)
        for path in drift:
            err.print(f"[red]out of date:[/] {path}")
        if drift:
            err.print("run `llm-consumer schemas` to regenerate")
            raise typer.Exit(1)
        console.print(f"{out}/ matches the models")
        return
    written = write_schemas(out)
    console.print(f"wrote {len(written)} files to {out}/")


# -- dlq ----------------------------------------------------------------------------------

QueueOpt = Annotated[str, typer.Option("--queue", help="dead or unrouted")]
CodeOpt = Annotated[str | None, typer.Option("--code", help="only this x-error-code")]
TypeOpt = Annotated[str | None, typer.Option("--type", help="only this event type")]
IdOpt = Annotated[str | None, typer.Option("--request-id", help="only this request id")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="at most this many")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON (secrets redacted)")]


def _ops_settings() -> Settings:
    return _settings(need_secret=False)


def _queue_name(settings: Settings, which: str) -> str:
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    queues = {"dead": topology.dead.name, "unrouted": topology.unrouted.name}
    if which not in queues:
        err.print(f"[bold red]error:[/] --queue must be one of {', '.join(queues)}")
        raise typer.Exit(2)
    return queues[which]


@dlq_app.command("list")
def dlq_list(queue: QueueOpt = "dead", code: CodeOpt = None, event_type: TypeOpt = None,
             request_id: IdOpt = None, limit: LimitOpt = None, as_json: JsonOpt = False) -> None:
    """Show dead letters in a table (they stay in the queue)."""
    settings = _ops_settings()
    _run(_dlq_list(settings, _queue_name(settings, queue),
                   dlq.Filter(code, event_type, request_id), limit, as_json))


async def _dlq_list(settings: Settings, queue: str, where: dlq.Filter, limit: int | None,
                    as_json: bool) -> None:
    async with await aio_pika.connect(str(settings.message_hub_url)) as connection:
        channel = await connection.channel()
        async with dlq.held_letters(channel, queue) as letters:
            shown = [x for x in letters if where.matches(x)][:limit]
            if as_json:
                _print_json({"queue": queue, "total": len(letters),
                             "letters": [dlq.summary(x) for x in shown]})
                return
            table = Table(title=f"{queue}: {len(letters)} message(s), {len(shown)} shown")
            for column in ("#", "request id", "type", "kind", "code", "reason", "time"):
                table.add_column(column, overflow="fold")
            for x in shown:  # Text cells: what callers chose is never read as markup
                table.add_row(*(Text(cell) for cell in (
                    str(x.position), x.request_id or x.message.message_id or "-",
                    x.routing_key, x.kind or "-", x.error_code, x.error_message[:80],
                    x.timestamp.isoformat(timespec="seconds") if x.timestamp else "-")))
            console.print(table)


@dlq_app.command("show")
def dlq_show(request_id: Annotated[str, typer.Argument(help="request id or message id")],
             queue: QueueOpt = "dead", as_json: JsonOpt = False) -> None:
    """Print one dead letter: headers (secrets redacted) and body."""
    settings = _ops_settings()
    found = _run(_dlq_show(settings, _queue_name(settings, queue), request_id, as_json))
    if not found:
        err.print(Text(f"no message {request_id!r} in {queue}"))
        raise typer.Exit(1)


async def _dlq_show(settings: Settings, queue: str, request_id: str, as_json: bool) -> bool:
    async with await aio_pika.connect(str(settings.message_hub_url)) as connection:
        channel = await connection.channel()
        async with dlq.held_letters(channel, queue) as letters:
            match = next((x for x in letters if dlq.Filter(request_id=request_id).matches(x)),
                         None)
            if match is None:
                return False
            try:
                body: Any = orjson.loads(match.message.body)
            except orjson.JSONDecodeError:
                body = None
            if as_json:
                _print_json({**dlq.summary(match), "body": body,
                             "raw_body": None if body is not None else repr(
                                 match.message.body[:2000])})
                return True
            console.print(Panel(Text(json.dumps(match.shown_headers, indent=2, default=str,
                                                ensure_ascii=False)),
                                title="headers (secrets redacted)"))
            if body is not None:
                console.print_json(data=body)
            else:
                console.print(Text(repr(match.message.body[:2000])))
            return True


def _print_json(value: object) -> None:
    """Machine-readable output: plain JSON on stdout, no wrapping, no markup."""
    sys.stdout.write(orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")


@dlq_app.command("replay")
def dlq_replay(queue: QueueOpt = "dead", code: CodeOpt = None, event_type: TypeOpt = None,
               request_id: IdOpt = None, limit: LimitOpt = None,
               dry_run: Annotated[bool, typer.Option("--dry-run", help="only say what")] = False,
               ) -> None:
    """Send dead letters back for processing (confirmed before each dead letter is acked)."""
    settings = _ops_settings()
    _run(_dlq_replay(settings, _queue_name(settings, queue),
                     dlq.Filter(code, event_type, request_id), limit, dry_run))


async def _dlq_replay(settings: Settings, queue: str, where: dlq.Filter, limit: int | None,
                      dry_run: bool) -> None:
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    async with await aio_pika.connect(str(settings.message_hub_url)) as connection:
        channel = await connection.channel(publisher_confirms=True)
        async with dlq.held_letters(channel, queue) as letters:
            chosen = [x for x in letters if where.matches(x)][:limit]
            if dry_run:
                for x in chosen:
                    console.print(f"would replay {x.request_id or x.message.message_id} "
                                  f"({x.routing_key}, {x.error_code})")
                console.print(f"{len(chosen)} of {len(letters)} would be replayed (dry run)")
                return
            count = await dlq.replay(channel, topology, chosen, on_each=lambda x: console.print(
                f"replayed {x.request_id or x.message.message_id} ({x.error_code})"))
            console.print(f"replayed {count} of {len(letters)} message(s) from {queue}")


@dlq_app.command("purge")
def dlq_purge(queue: QueueOpt = "dead",
              yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
              ) -> None:
    """Delete every message in the dead-letter queue (asks first)."""
    settings = _ops_settings()
    name = _queue_name(settings, queue)
    depth = _run(_depth(settings, name))
    if not yes and not typer.confirm(f"Delete all {depth} message(s) in {name}?"):
        raise typer.Exit(1)
    purged = _run(_purge(settings, name))
    console.print(f"purged {purged} message(s) from {name}")


async def _depth(settings: Settings, name: str) -> int:
    async with await aio_pika.connect(str(settings.message_hub_url)) as connection:
        return await dlq.queue_depth(await connection.channel(), name)


async def _purge(settings: Settings, name: str) -> int:
    async with await aio_pika.connect(str(settings.message_hub_url)) as connection:
        channel = await connection.channel()
        queue = await channel.get_queue(name, ensure=True)
        result = await queue.purge()
        return int(result.message_count or 0)


app.add_typer(cache_app, name="cache")
app.command()(usage)


def main() -> None:
    app()
