"""CLI command ``serve``: the HTTP API and the search page for one collection (the server extra)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..config import Settings, StageModels
from ..server import ServerConfig
from ..server import serve as run_server
from ..server.config import split_list
from .options import Collection, DataDir, Db, Device, Verbose, handle_errors, setup_logging

__all__ = ["serve"]

Host = Annotated[str, typer.Option(help="Address to listen on. Anything but loopback needs API keys.")]
Port = Annotated[int, typer.Option(help="Port to listen on.")]
ReadKeys = Annotated[Optional[str], typer.Option(
    "--read-keys", envvar="SEARCHENGINE_READ_KEYS", show_default=False,
    help="Comma-separated API keys that may search (prefer the environment variable).")]
AdminKeys = Annotated[Optional[str], typer.Option(
    "--admin-keys", envvar="SEARCHENGINE_ADMIN_KEYS", show_default=False,
    help="Comma-separated API keys that may also index, import and remove.")]
CorsOrigin = Annotated[Optional[list[str]], typer.Option(
    "--cors-origin", envvar="SEARCHENGINE_CORS_ORIGINS", show_default=False,
    help="A web origin allowed to call the API from a browser (repeat for more). Default: none.")]
MaxUploadMb = Annotated[float, typer.Option(help="Largest request body (an uploaded image), in MB.")]
RateLimit = Annotated[int, typer.Option(
    envvar="SEARCHENGINE_RATE_LIMIT", help="Requests per minute per key (or per client address); 0: off.")]
VqaModel = Annotated[Optional[str], typer.Option(
    "--vqa-model", envvar="SEARCHENGINE_VQA_MODEL", show_default=False,
    help="BLIP VQA model for questions about results (offered on the page only when set).")]
CaptionModel = Annotated[Optional[str], typer.Option(
    "--caption-model", envvar="SEARCHENGINE_CAPTION_MODEL", show_default=False,
    help="BLIP captioning model for generated captions.")]
RerankModel = Annotated[Optional[str], typer.Option(
    "--rerank-model", envvar="SEARCHENGINE_RERANK_MODEL", show_default=False,
    help="Reranker for search?rerank=true: a BLIP ITM model or an in-house ITM folder.")]
FirstModel = Annotated[Optional[str], typer.Option(
    "--model", "-m", envvar="SEARCHENGINE_MODEL", show_default=False,
    help="Model of a collection that the first admin index job creates.")]


def serve(
    collection: Collection = "default", host: Host = "127.0.0.1", port: Port = 8000, read_keys: ReadKeys = None,
    admin_keys: AdminKeys = None, cors_origin: CorsOrigin = None, max_upload_mb: MaxUploadMb = 20.0,
    rate_limit: RateLimit = 600, vqa_model: VqaModel = None, caption_model: CaptionModel = None,
    rerank_model: RerankModel = None, model: FirstModel = None,
    data_dir: DataDir = None, db: Db = None, device: Device = "auto", verbose: Verbose = False,
) -> None:
    """Serve the HTTP API and the search page for one collection (needs the server extra).

    Open http://127.0.0.1:8000/ for the page and /api/docs for the API. Binds to loopback by
    default; listening on another address is refused unless API keys are set. --model names the
    model of a collection that the first admin index job creates.
    """
    setup_logging(verbose)
    with handle_errors():
        stage_models = StageModels.from_env(rerank=rerank_model, caption=caption_model, vqa=vqa_model)
        config = ServerConfig.from_env(
            host=host, port=port, read_keys=None if read_keys is None else split_list(read_keys),
            admin_keys=None if admin_keys is None else split_list(admin_keys),
            cors_origins=tuple(o for raw in cors_origin or [] for o in split_list(raw)),
            max_upload_bytes=int(max_upload_mb * 1024 * 1024), rate_per_minute=rate_limit,
            **stage_models.offered())
        settings = Settings.from_env(collection=collection, data_dir=data_dir, db_url=db, device=device,
                                     stage_models=stage_models)
        config.check_bind()
        typer.echo(f"Serving collection {collection!r} on http://{host}:{port}/ (API docs at /api/docs)", err=True)
        run_server(settings, config, model=model, log_level="info" if verbose else "warning")
