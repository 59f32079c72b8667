"""What every command shares: the consoles, settings loading, exit codes, one-line failures,
JSON Lines output and tables that fit the terminal.

Exit codes (docs/running.md):
  0  done
  1  the answer is negative: a failed generation or dead letter, an unhealthy service, nothing
     found, an item that failed
  2  invalid input or configuration (typer's own usage errors too)
  3  the service is not there: no queue takes the request
  4  no result within --timeout
  5  the broker cannot be reached or refused the connection (address, user, password, vhost)
  6  Redis cannot be reached
  130  a second Ctrl-C during `run`'s drain
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from enum import IntEnum
from typing import Any, NoReturn, TypeVar

import orjson
import typer
from aiormq.exceptions import AMQPConnectionError, ProtocolSyntaxError
from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from llm_consumer.bus.declare import TopologyConflict
from llm_consumer.client import BrokerUnavailable, describe_connection_error
from llm_consumer.settings import Settings, SettingsError, load_settings
from llm_consumer.store.client import RedisMisconfigured

T = TypeVar("T")


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    NO_SERVICE = 3
    TIMEOUT = 4
    BROKER = 5
    REDIS = 6
    FORCED = 130


def no_color() -> bool:
    """https://no-color.org: NO_COLOR set to anything but the empty string."""
    return bool(os.environ.get("NO_COLOR"))


def make_console(*, stderr: bool = False) -> Console:
    # color_system=None renders no escape code at all (bold included), not just no colours
    return Console(stderr=stderr, color_system=None if no_color() else "auto",
                   highlight=not no_color())


console = make_console()
err = make_console(stderr=True)


def fail(message: str, code: Exit) -> NoReturn:
    """One line on stderr, then the exit code. The message is printed as text, never markup."""
    prefix = Text("error: ", style="bold red")
    err.print(prefix + Text(" ".join(message.split())), soft_wrap=True)
    raise typer.Exit(int(code))


def load(*, need_secret: bool = False) -> Settings:
    try:
        return load_settings(need_secret=need_secret)
    except SettingsError as error:
        fail(str(error), Exit.USAGE)


def quiet_libraries() -> None:
    """aiormq logs each failed connection attempt before raising it: the CLI says it once."""
    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)


def run(coro: Coroutine[Any, Any, T], settings: Settings) -> T:
    """Run a command's coroutine; every broker and Redis connection problem is one line."""
    quiet_libraries()
    try:
        return asyncio.run(coro)
    except BrokerUnavailable as error:
        fail(str(error), Exit.BROKER)
    except (TopologyConflict, RedisMisconfigured) as error:
        fail(str(error), Exit.USAGE)
    except RedisError as error:
        fail(f"Redis at {redis_where(settings.redis_url)}: {error}", Exit.REDIS)
    except (AMQPConnectionError, ProtocolSyntaxError, TimeoutError) as error:  # run, demo
        fail(describe_connection_error(error, settings.message_hub_nodes[0]), Exit.BROKER)


def redis_where(url: str) -> str:
    """The Redis URL without its password."""
    from yarl import URL

    parsed = URL(url.split(",")[0])
    return str(parsed.with_password(None) if parsed.password else parsed)


def json_line(value: object) -> None:
    """One JSON object per line on stdout (JSON Lines): no wrapping, no markup, no colour."""
    sys.stdout.write(orjson.dumps(value, default=str).decode() + "\n")
    sys.stdout.flush()


def show_rows(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *,
              right: frozenset[str] = frozenset(), footer: Sequence[str] | None = None) -> None:
    """A table whose cells wrap (never cut); when even wrapped it cannot fit the terminal,
    one block of `column value` lines per row. Cells are Text: never read as markup."""
    table = Table(title=title, show_footer=footer is not None)
    for index, column in enumerate(columns):
        table.add_column(column, overflow="fold", justify="right" if column in right else "left",
                         footer=footer[index] if footer else "")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    if _narrowest(columns, rows) <= console.width:
        console.print(table)
        return
    console.print(Text(title, style="bold"))
    for row in rows:
        block = Table.grid(padding=(0, 1))
        block.add_column(style="dim", no_wrap=True)
        block.add_column(overflow="fold")
        for column, cell in zip(columns, row, strict=True):
            block.add_row(column, Text(cell))
        console.print(block)
        console.print()
    if footer:
        console.print(Text("  ".join(f"{c}: {v}" for c, v in zip(columns, footer, strict=True)
                                     if v)))


def _narrowest(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    """The table's width when every column is as narrow as its longest word (no word cut)."""
    widths = [max(len(word) for cell in (column, *(row[i] for row in rows))
                  for word in (cell.split() or [""]))
              for i, column in enumerate(columns)]
    return sum(widths) + 3 * len(widths) + 1  # a space either side and one border each
