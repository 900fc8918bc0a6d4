"""What the route modules share: the API-key dependencies (``Read``, ``Admin``), the server's caps on a
request, the query image of a request, and the JSON shape of a hit."""

from __future__ import annotations

import time
from typing import Annotated, Any, Callable, Optional

from fastapi import Depends, HTTPException, Request, UploadFile
from fastapi.security import APIKeyHeader, HTTPBearer

from ... import errors as E
from ...engine import Hit, ImageQuery, SearchEngine
from ...imaging import safe_open
from ..config import ServerConfig
from ..security import access_of, presented_key

__all__ = ["MAX_ID", "NOSNIFF", "Read", "Admin", "engine_of", "config_of", "check_limits", "offered",
           "parse_image_id", "query_image", "hit_dict", "hits_response"]

NOSNIFF = {"X-Content-Type-Options": "nosniff"}
MAX_ID = 2**62  # image ids are SQL bigints
_bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer KEY`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")


def _need(level: str) -> Callable:
    def check(request: Request, _b: Annotated[Any, Depends(_bearer)], _h: Annotated[Any, Depends(_header)]) -> str:
        access = access_of(config_of(request), presented_key(request.headers, request.cookies, request.method))
        if access is None or access == "none":
            raise HTTPException(401, "a valid API key is required", headers={"WWW-Authenticate": "Bearer"})
        if level == "admin" and access != "admin":
            raise HTTPException(403, "this endpoint needs an admin key")
        return access

    return check


Read = Depends(_need("read"))
Admin = Depends(_need("admin"))


def engine_of(request: Request) -> SearchEngine:
    """The engine to serve this request with (the app's EngineHolder swaps it after writes)."""
    return request.app.state.holder.get()


def config_of(request: Request) -> ServerConfig:
    return request.app.state.config


def check_limits(config: ServerConfig, *, k: int | None = None, text: str | None = None) -> None:
    """The server's own caps on ``k`` and query length (the schema's caps may be higher): 422 above them."""
    if k is not None and k > config.max_k:
        raise HTTPException(422, f"k is capped at {config.max_k}")
    if text is not None and len(text) > config.max_query_chars:
        raise HTTPException(422, f"queries are capped at {config.max_query_chars} characters")


def offered(config: ServerConfig, *, ask: bool = False, caption: bool = False, rerank: bool = False) -> None:
    """A model stage the server was not started with is a client error (400), not an outage."""
    for wanted, have, what, option in ((ask, config.vqa, "question-answering", "--vqa-model"),
                                       (caption, config.caption, "captioning", "--caption-model"),
                                       (rerank, config.rerank, "reranking", "--rerank-model")):
        if wanted and not have:
            raise HTTPException(400, f"this server offers no {what} model (start it with {option})")


def parse_image_id(raw: str) -> int:
    """Image ids in paths are plain integers; anything else (``..``, a path) names no image."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise E.NotFoundError(f"no image with id {raw!r}")
    return int(raw)


def query_image(request: Request, file: UploadFile | None, image_id: Optional[int],
                engine: SearchEngine) -> ImageQuery:
    """The query image: an upload (decoded under the server's pixel cap) or an indexed image's path."""
    if (file is None) == (image_id is None):
        raise HTTPException(422, "send either an image file or the id of an indexed image")
    config = config_of(request)
    if file is not None:
        data = file.file.read(config.max_upload_bytes + 1)
        return safe_open(data, max_pixels=config.max_pixels)
    return engine.image(image_id).path


def hit_dict(hit: Hit) -> dict[str, Any]:
    """A hit as JSON, with the URLs of its thumbnail and original."""
    out = hit.to_dict()
    out["thumbnail"] = f"/api/images/{hit.id}/thumbnail"
    out["original"] = f"/api/images/{hit.id}/original"
    return out


def hits_response(hits: list[Hit], started: float) -> dict[str, Any]:
    return {"hits": [hit_dict(h) for h in hits], "took_ms": round((time.perf_counter() - started) * 1000, 2)}
