"""The `llm-consumer` command. Each group lives in a module of this package; they parse
options, call the service's modules (bus/, store/, client.py) and render. Exit codes:
cli/common.py."""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated

import typer
from typer._click import exceptions as click_errors  # typer vendors click: these types

from llm_consumer import __version__
from llm_consumer.cli import cache as cache_commands
from llm_consumer.cli import dlq as dlq_commands
from llm_consumer.cli import docs as docs_commands
from llm_consumer.cli import queue as queue_commands
from llm_consumer.cli import requests as request_commands
from llm_consumer.cli import service as service_commands
from llm_consumer.cli.common import Exit, console, err, fail, no_color

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False)


def _version(value: bool) -> None:
    if value:
        console.print(f"llm-consumer {__version__}", highlight=False)
        raise typer.Exit()


@app.callback(help=(
    "LLM service of the D&D character-creator platform (RabbitMQ consumer).\n\n"
    "Exit codes: 0 done, 1 negative answer, 2 invalid input or configuration, 3 no service, "
    "4 time-out, 5 broker unreachable or refused, 6 Redis unreachable, 130 a second Ctrl-C "
    "during the drain."))
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """The options every command shares (exit codes: cli/common.py)."""


service_commands.register(app)
request_commands.register(app)
docs_commands.register(app)
app.add_typer(dlq_commands.dlq_app, name="dlq")
app.add_typer(cache_commands.cache_app, name="cache")
app.add_typer(queue_commands.queue_app, name="queue")
app.command()(cache_commands.usage)


def main() -> None:
    """Run the command; a usage error (an unknown option, a value out of range) is one line
    with exit code 2, like every other failure."""
    if no_color():  # typer's help has a console of its own
        from typer import rich_utils

        rich_utils.COLOR_SYSTEM = None
    try:
        code = typer.main.get_command(app).main(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as error:
        typer.echo(error.ctx.get_help() if error.ctx else "", nl=False)
        code = error.exit_code
    except click_errors.UsageError as error:
        where = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
        code = _one_line(f"{error.format_message()}{where}")
    except click_errors.ClickException as error:
        code = _one_line(error.format_message())
    except typer.Abort:
        err.print("aborted")
        code = Exit.FAILED
    sys.exit(int(code) if isinstance(code, int) else 0)


def _one_line(message: str) -> Exit:
    with contextlib.suppress(typer.Exit):
        fail(message, Exit.USAGE)
    return Exit.USAGE
