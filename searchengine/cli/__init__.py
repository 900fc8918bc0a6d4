"""The ``searchengine`` command line: a thin typer layer over the library.

This module builds :data:`app` from the command modules (each defines plain functions; nothing
registers itself on import); :func:`run` is the console-script entry point. Only this package turns
library errors into messages and exit codes (:func:`searchengine.cli.options.handle_errors`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__
from . import evaluate, index, search, serve, stages, train

__all__ = ["app", "run"]

HELP = "Semantic image search: index photo folders with CLIP and search them by text or by image."


def _version(value: bool) -> None:
    if value:
        typer.echo(f"searchengine {__version__}")
        raise typer.Exit()


def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Semantic image search: index photo folders with CLIP and search them by text or by image."""


def build_app() -> typer.Typer:
    """The whole command tree, in the order ``--help`` lists it."""
    cli = typer.Typer(
        name="searchengine",
        help=HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # help texts are plain: "[default: ...]" must print as written
    )
    cli.callback()(main)
    cli.command()(index.index)
    cli.command("import")(index.import_)
    cli.command()(search.search)
    cli.command()(search.status)
    cli.command()(search.duplicates)
    cli.command("rebuild-index")(index.rebuild_index)
    cli.command("build-index")(index.build_index)
    cli.command("export-model")(index.export_model)
    cli.command()(train.train)
    eval_app = typer.Typer(help=evaluate.EVAL_HELP, no_args_is_help=True, rich_markup_mode=None)
    eval_app.command("retrieval")(evaluate.eval_retrieval)
    eval_app.command("zeroshot")(evaluate.eval_zeroshot)
    cli.add_typer(eval_app, name="eval")
    for command in (stages.caption, stages.ask, stages.classify, stages.tag, serve.serve, index.remove):
        cli.command()(command)
    return cli


app = build_app()


def run() -> None:  # console-script entry point
    app()
