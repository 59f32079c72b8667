"""`llm-consumer schemas` and `llm-consumer config`: files generated from the code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llm_consumer.cli.common import Exit, console, err


def register(app: typer.Typer) -> None:
    app.command()(schemas)
    app.command()(config)


def schemas(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("schemas"),
    check: Annotated[bool, typer.Option(help="fail if the files differ from the models")] = False,
) -> None:
    """Write JSON Schemas and the AsyncAPI document of the contract into schemas/."""
    from llm_consumer.events.schema_export import check_schemas, write_schemas

    if check:
        drift = check_schemas(out)
        for path in drift:
            err.print(f"out of date: {path}", style="red")
        if drift:
            err.print("run `llm-consumer schemas` to regenerate")
            raise typer.Exit(int(Exit.FAILED))
        console.print(f"{out}/ matches the models")
        return
    written = write_schemas(out)
    console.print(f"wrote {len(written)} files to {out}/")


def config(
    write: Annotated[bool, typer.Option(help="write docs/configuration.md and .env.example")
                     ] = False,
    check: Annotated[bool, typer.Option(help="fail if those files differ from the settings")
                     ] = False,
    root: Annotated[Path, typer.Option(help="the repository's root")] = Path("."),
) -> None:
    """Every setting with its default and meaning, generated from the settings model.

    Without an option: .env.example on stdout. Run `llm-consumer config --write` from the
    repository's root after adding or changing a setting.
    """
    from llm_consumer import config_docs

    if check:
        drift = config_docs.drift(root)
        for path in drift:
            err.print(f"out of date: {path}", style="red")
        if drift:
            err.print(f"run `{config_docs.REGENERATE}` to regenerate")
            raise typer.Exit(int(Exit.FAILED))
        console.print("docs/configuration.md and .env.example match the settings")
        return
    if write:
        for path in config_docs.write(root):
            console.print(f"wrote {root / path}")
        return
    typer.echo(config_docs.render_env_example(), nl=False)
