"""CLI commands ``serve`` (the HTTP API and web page) and ``remove`` (images leave a collection).

:func:`register` adds them to the ``searchengine`` app (called once by :mod:`searchengine.cli`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli import Collection, DataDir, Db, Device, Json, Verbose, _echo_json, _errors, _logging, _open


def serve(
    collection: Collection = "default",
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but loopback needs API keys.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    read_keys: Annotated[Optional[str], typer.Option(
        "--read-keys", envvar="SEARCHENGINE_READ_KEYS", show_default=False,
        help="Comma-separated API keys that may search (prefer the environment variable).")] = None,
    admin_keys: Annotated[Optional[str], typer.Option(
        "--admin-keys", envvar="SEARCHENGINE_ADMIN_KEYS", show_default=False,
        help="Comma-separated API keys that may also index, import and remove.")] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option(
        "--cors-origin", envvar="SEARCHENGINE_CORS_ORIGINS", show_default=False,
        help="A web origin allowed to call the API from a browser (repeat for more). Default: none.")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body (an uploaded image), in MB.")] = 20.0,
    rate_limit: Annotated[int, typer.Option(
        envvar="SEARCHENGINE_RATE_LIMIT", help="Requests per minute per key (or per client address); 0: off.")] = 600,
    vqa_model: Annotated[Optional[str], typer.Option(
        "--vqa-model", envvar="SEARCHENGINE_VQA_MODEL", show_default=False,
        help="BLIP VQA model for questions about results (offered on the page only when set).")] = None,
    caption_model: Annotated[Optional[str], typer.Option(
        "--caption-model", envvar="SEARCHENGINE_CAPTION_MODEL", show_default=False,
        help="BLIP captioning model for generated captions.")] = None,
    rerank_model: Annotated[Optional[str], typer.Option(
        "--rerank-model", envvar="SEARCHENGINE_RERANK_MODEL", show_default=False,
        help="Reranker for search?rerank=true: a BLIP ITM model or an in-house ITM folder.")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", envvar="SEARCHENGINE_MODEL", show_default=False,
        help="Model of a collection that the first admin index job creates.")] = None,
    data_dir: DataDir = None,
    db: Db = None,
    device: Device = "auto",
    verbose: Verbose = False,
) -> None:
    """Serve the HTTP API and the search page for one collection (needs the server extra).

    Open http://127.0.0.1:8000/ for the page and /api/docs for the API. Binds to loopback by
    default; listening on another address is refused unless API keys are set. --model names the
    model of a collection that the first admin index job creates.
    """
    import os

    from .config import Settings
    from .server import ServerConfig
    from .server import serve as run_server
    from .server.config import split_list

    _logging(verbose)
    with _errors():
        if vqa_model:
            os.environ["SEARCHENGINE_VQA_MODEL"] = vqa_model  # the engine's stages read their specs from here
        if caption_model:
            os.environ["SEARCHENGINE_CAPTION_MODEL"] = caption_model
        if rerank_model:
            os.environ["SEARCHENGINE_RERANK_MODEL"] = rerank_model
        # stage models were put in the environment above, where from_env sees them
        config = ServerConfig.from_env(
            host=host, port=port, read_keys=None if read_keys is None else split_list(read_keys),
            admin_keys=None if admin_keys is None else split_list(admin_keys),
            cors_origins=tuple(o for raw in cors_origin or [] for o in split_list(raw)),
            max_upload_bytes=int(max_upload_mb * 1024 * 1024), rate_per_minute=rate_limit)
        settings = Settings.from_env(collection=collection, data_dir=data_dir, db_url=db, device=device)
        config.check_bind()
        typer.echo(f"Serving collection {collection!r} on http://{host}:{port}/ (API docs at /api/docs)", err=True)
        run_server(settings, config, model=model, log_level="info" if verbose else "warning")


def remove(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (they need not exist any more).",
                                                show_default=False)],
    collection: Collection = "default",
    data_dir: DataDir = None,
    db: Db = None,
    device: Device = "auto",
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Remove the images at or below PATHS from the collection (the files themselves are not touched)."""
    from indexer import remove_paths

    _logging(verbose)
    with _errors(), _open(collection, data_dir, db, device, writable=True) as engine:
        report = remove_paths(paths, engine=engine)
        if json_out:
            _echo_json(report.to_dict())
        else:
            typer.echo(f"Removed {report.removed} images from {collection!r}.")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(remove)
