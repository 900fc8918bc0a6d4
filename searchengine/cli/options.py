"""What every command of the ``searchengine`` CLI shares: the common options, the one place that turns
library errors into messages and exit codes (each error's ``exit_code``; 130 after Ctrl-C), logging,
opening a collection, the progress bar and the JSON/print helpers.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from tqdm import tqdm

from ..engine import SearchEngine
from ..errors import SearchEngineError

__all__ = [
    "Collection", "DataDir", "Db", "Device", "Precision", "Json", "EngineKind", "RayAddress", "ShardSize", "Verbose",
    "fail", "handle_errors", "setup_logging", "open_engine", "echo_json", "echo_errors", "ProgressBar",
]

Collection = Annotated[str, typer.Option("--collection", "-c", envvar="SEARCHENGINE_COLLECTION",
                                         help="Collection name.")]
DataDir = Annotated[Optional[Path], typer.Option("--data-dir", envvar="SEARCHENGINE_HOME", show_default=False,
                                                 help="Data directory [default: $XDG_DATA_HOME/searchengine].")]
Db = Annotated[Optional[str], typer.Option("--db", envvar="SEARCHENGINE_DB", show_default=False,
                                           help="SQLAlchemy database URL [default: SQLite in the data directory].")]
Device = Annotated[str, typer.Option("--device", envvar="SEARCHENGINE_DEVICE",
                                     help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.")]
Precision = Annotated[str, typer.Option(
    "--precision", envvar="SEARCHENGINE_PRECISION",
    help="Model precision: auto (fp16 on CUDA; bf16 on CPUs with AMX when it stays within cosine 0.99 "
         "of fp32, checked at load), fp32, bf16 or fp16.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
EngineKind = Annotated[str, typer.Option(
    "--engine", help="local: decode and encode here. ray: decode and encode in shards on Ray Data (the ray extra), "
         "each written here as it finishes; run a failed job again and only the shards that were running are redone.")]
RayAddress = Annotated[Optional[str], typer.Option(
    "--address", envvar="RAY_ADDRESS", show_default=False,
    help="--engine ray: the cluster, e.g. ray://host:10001 [default: a local Ray].")]
ShardSize = Annotated[int, typer.Option("--shard-size", min=1, help="--engine ray: files per shard.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")]


def fail(message: str, code: int) -> None:
    """Print ``Error: message`` on stderr and exit with ``code``."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn library errors and Ctrl-C into one-line messages and exit codes."""
    try:
        yield
    except SearchEngineError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("\nInterrupted. Everything written so far is kept; run the command again to finish.", err=True)
        raise typer.Exit(130) from None


def setup_logging(verbose: bool) -> None:
    """Our warnings always; third-party log lines (open_clip logs failures at ERROR) only with --verbose,
    since the CLI reports every failure itself in one line."""
    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL,
                        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s")
    logging.getLogger("searchengine").setLevel(logging.INFO if verbose else logging.WARNING)


def open_engine(collection: str, data_dir: Optional[Path], db: Optional[str], device: str,
                **kw: Any) -> SearchEngine:
    """Open an existing collection with the command's options."""
    return SearchEngine.open(collection, data_dir=data_dir, db=db, device=device, **kw)


def echo_json(obj: object) -> None:
    """Print ``obj`` as indented JSON (non-ASCII kept)."""
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def echo_errors(errors: list) -> None:
    """The first ten per-file errors of a run on stderr, and how many more there are."""
    for err in errors[:10]:
        typer.echo(f"  failed: {err.path}: {err.error}", err=True)
    if len(errors) > 10:
        typer.echo(f"  ... and {len(errors) - 10} more (searchengine status --errors)", err=True)


class ProgressBar:
    """tqdm progress for long runs: items/s and ETA on stderr (nothing when disabled, e.g. with --json)."""

    def __init__(self, enabled: bool, desc: str = "Indexing") -> None:
        self.enabled = enabled
        self.desc = desc
        self.bar: tqdm | None = None

    def start(self, total: int) -> None:
        if self.enabled and total:
            self.bar = tqdm(total=total, unit="img", desc=self.desc, dynamic_ncols=True, file=sys.stderr)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
