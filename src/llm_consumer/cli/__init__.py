"""The `llm-consumer` command. Each group lives in a module of this package; they parse
options, call the service's modules (bus/, store/, client.py) and render. Exit codes:
cli/common.py."""

from __future__ import annotations

from typing import Annotated

import typer

from llm_consumer import __version__
from llm_consumer.cli import cache as cache_commands
from llm_consumer.cli import dlq as dlq_commands
from llm_consumer.cli import docs as docs_commands
from llm_consumer.cli import requests as request_commands
from llm_consumer.cli import service as service_commands
from llm_consumer.cli.common import console, no_color

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False)


def _version(value: bool) -> None:
    if value:
        console.print(f"llm-consumer {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """LLM service of the D&D character-creator platform (RabbitMQ consumer).

    Exit codes: 0 done, 1 negative answer, 2 invalid input or configuration, 3 no service,
    4 time-out, 5 broker unreachable or refused, 6 Redis unreachable.
    """


service_commands.register(app)
request_commands.register(app)
docs_commands.register(app)
app.add_typer(dlq_commands.dlq_app, name="dlq")
app.add_typer(cache_commands.cache_app, name="cache")
app.command()(cache_commands.usage)


def main() -> None:
    if no_color():  # typer's help and usage errors have a console of their own
        from typer import rich_utils

        rich_utils.COLOR_SYSTEM = None
    app()
