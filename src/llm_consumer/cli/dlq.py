"""`llm-consumer dlq {list,show,replay,purge}`: the dead-letter and unrouted queues.

The broker work is bus/dlq.py's (held letters, replay, depth); this module connects, picks the
queue, and renders. A queue the service never declared (a fresh hub, another QUEUE_PREFIX) is
one line, not an error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
import typer
from aio_pika.abc import AbstractChannel
from rich.panel import Panel
from rich.text import Text

from llm_consumer.bus import dlq
from llm_consumer.bus.depth import queue_depth
from llm_consumer.bus.topology import build_topology
from llm_consumer.cli.common import Exit, console, err, fail, json_line, load, run, show_rows
from llm_consumer.client import open_hub, queue_exists
from llm_consumer.settings import Settings

dlq_app = typer.Typer(no_args_is_help=True, help="Inspect, replay and purge dead letters.")

QueueOpt = Annotated[str, typer.Option("--queue", help="dead or unrouted")]
CodeOpt = Annotated[str | None, typer.Option("--code", help="only this x-error-code")]
TypeOpt = Annotated[str | None, typer.Option("--type", help="only this event type")]
IdOpt = Annotated[str | None, typer.Option("--request-id", help="only this request id")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="at most this many")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON Lines (secrets redacted)")]


class Missing(Exception):
    """The queue does not exist on the hub."""


def _queue_name(settings: Settings, which: str) -> str:
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    queues = {"dead": topology.dead.name, "unrouted": topology.unrouted.name}
    if which not in queues:
        fail(f"--queue must be one of {', '.join(queues)}, not {which!r}", Exit.USAGE)
    return queues[which]


def _say_missing(settings: Settings, queue: str) -> None:
    err.print(Text(f"{queue} does not exist on this hub: no service has run here with "
                   f"QUEUE_PREFIX={settings.queue_prefix!r}, so nothing was dead-lettered"),
              soft_wrap=True)


@asynccontextmanager
async def _channel(settings: Settings, queue: str, *,
                   confirms: bool = False) -> AsyncIterator[AbstractChannel]:
    async with open_hub(settings.message_hub_nodes) as connection:
        if not await queue_exists(connection, queue):
            raise Missing(queue)
        yield await connection.channel(publisher_confirms=confirms)


@dlq_app.command("list")
def dlq_list(queue: QueueOpt = "dead", code: CodeOpt = None, event_type: TypeOpt = None,
             request_id: IdOpt = None, limit: LimitOpt = None, as_json: JsonOpt = False) -> None:
    """Show dead letters in a table (they stay in the queue); --json: one letter per line."""
    settings = load()
    name = _queue_name(settings, queue)
    where = dlq.Filter(code, event_type, request_id)
    try:
        total, shown = run(_list(settings, name, where, limit), settings)
    except Missing:
        _say_missing(settings, name)
        return
    if as_json:
        for letter in shown:
            json_line({"queue": name, **letter})
        return
    if total == 0:
        console.print(f"{name} is empty: no dead letters")
        return
    show_rows(f"{name}: {total} message(s), {len(shown)} shown",
              ("#", "request id", "type", "kind", "code", "reason", "time"),
              [[str(x["position"]), x["request_id"] or x["message_id"] or "-", x["type"],
                x["kind"] or "-", x["code"], str(x["reason"])[:200], x["time"] or "-"]
               for x in shown])


async def _list(settings: Settings, queue: str, where: dlq.Filter,
                limit: int | None) -> tuple[int, list[dict[str, Any]]]:
    async with _channel(settings, queue) as channel, dlq.held_letters(channel, queue) as letters:
        return len(letters), [dlq.summary(x) for x in letters if where.matches(x)][:limit]


@dlq_app.command("show")
def dlq_show(request_id: Annotated[str, typer.Argument(help="request id or message id")],
             queue: QueueOpt = "dead", as_json: JsonOpt = False) -> None:
    """Print one dead letter: headers (secrets redacted) and body."""
    settings = load()
    name = _queue_name(settings, queue)
    try:
        found = run(_show(settings, name, request_id), settings)
    except Missing:
        _say_missing(settings, name)
        raise typer.Exit(int(Exit.FAILED)) from None
    if found is None:
        fail(f"no message {request_id!r} in {name}", Exit.FAILED)
    summary, body, raw = found
    if as_json:
        json_line({**summary, "body": body, "raw_body": raw})
        return
    console.print(Panel(Text(json.dumps(summary["headers"], indent=2, default=str,
                                        ensure_ascii=False)),
                        title="headers (secrets redacted)"))
    if body is not None:
        console.print_json(data=body)
    else:
        console.print(Text(str(raw)))


async def _show(settings: Settings, queue: str, request_id: str,
                ) -> tuple[dict[str, Any], Any, str | None] | None:
    async with _channel(settings, queue) as channel, dlq.held_letters(channel, queue) as letters:
        match = next((x for x in letters if dlq.Filter(request_id=request_id).matches(x)),
                     None)
        if match is None:
            return None
        try:
            body: Any = orjson.loads(match.message.body)
        except orjson.JSONDecodeError:
            return dlq.summary(match), None, repr(match.message.body[:2000])
        return dlq.summary(match), body, None


@dlq_app.command("replay")
def dlq_replay(queue: QueueOpt = "dead", code: CodeOpt = None, event_type: TypeOpt = None,
               request_id: IdOpt = None, limit: LimitOpt = None,
               dry_run: Annotated[bool, typer.Option("--dry-run", help="only say what")] = False,
               as_json: JsonOpt = False) -> None:
    """Send dead letters back for processing (confirmed before each dead letter is acked)."""
    settings = load()
    name = _queue_name(settings, queue)
    try:
        run(_replay(settings, name, dlq.Filter(code, event_type, request_id), limit, dry_run,
                    as_json), settings)
    except Missing:
        _say_missing(settings, name)


async def _replay(settings: Settings, queue: str, where: dlq.Filter, limit: int | None,
                  dry_run: bool, as_json: bool) -> None:
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)

    def said(verb: str, letter: dlq.DeadLetter) -> None:
        if as_json:
            json_line({"action": verb, "queue": queue, "request_id": letter.request_id,
                       "message_id": letter.message.message_id, "type": letter.routing_key,
                       "code": letter.error_code})
        else:
            console.print(Text(f"{verb} {letter.request_id or letter.message.message_id} "
                               f"({letter.routing_key}, {letter.error_code})"))

    async with _channel(settings, queue, confirms=True) as channel, dlq.held_letters(
            channel, queue) as letters:
        chosen = [x for x in letters if where.matches(x)][:limit]
        if dry_run:
            for x in chosen:
                said("would replay", x)
            if not as_json:
                console.print(f"{len(chosen)} of {len(letters)} would be replayed (dry run)")
            return
        count = await dlq.replay(channel, topology, chosen,
                                 on_each=lambda x: said("replayed", x))
        if not as_json:
            console.print(f"replayed {count} of {len(letters)} message(s) from {queue}")


@dlq_app.command("purge")
def dlq_purge(queue: QueueOpt = "dead",
              yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
              ) -> None:
    """Delete every message in the dead-letter queue (asks first)."""
    settings = load()
    name = _queue_name(settings, queue)
    try:
        depth = run(_depth(settings, name), settings)
    except Missing:
        _say_missing(settings, name)
        return
    if depth == 0:
        console.print(f"{name} is empty: nothing to purge")
        return
    if not yes and not typer.confirm(f"Delete all {depth} message(s) in {name}?"):
        raise typer.Exit(int(Exit.FAILED))
    purged = run(_purge(settings, name), settings)
    console.print(f"purged {purged} message(s) from {name}")


async def _depth(settings: Settings, name: str) -> int:
    async with _channel(settings, name) as channel:
        return await queue_depth(channel, name)


async def _purge(settings: Settings, name: str) -> int:
    async with _channel(settings, name) as channel:
        queue = await channel.get_queue(name, ensure=True)
        result = await queue.purge()
        return int(result.message_count or 0)
