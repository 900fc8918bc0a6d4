"""The FastAPI application: the HTTP API under ``/api`` and the web page at ``/``.

Build it with :func:`create_app`; ``searchengine serve`` runs it with uvicorn.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPBearer
from fastapi.staticfiles import StaticFiles

from .. import errors as E
from ..engine import Hit, SearchEngine
from .config import ServerConfig
from .jobs import EngineHolder, JobManager, open_writer_for
from .models import AskBody, ImportBody, IndexBody, RemoveBody, SearchParams
from .security import BodyLimit, RateLimiter, access_of, presented_key

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
MAX_ID = 2**62  # image ids are SQL bigints
_bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer KEY`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")


def _need(level: str) -> Callable:
    def check(request: Request, _b: Annotated[Any, Depends(_bearer)], _h: Annotated[Any, Depends(_header)]) -> str:
        config: ServerConfig = request.app.state.config
        access = access_of(config, presented_key(request.headers, request.cookies, request.method))
        if access is None or access == "none":
            raise HTTPException(401, "a valid API key is required", headers={"WWW-Authenticate": "Bearer"})
        if level == "admin" and access != "admin":
            raise HTTPException(403, "this endpoint needs an admin key")
        return access

    return check


Read = Depends(_need("read"))
Admin = Depends(_need("admin"))


def create_app(open_engine: Callable[[], SearchEngine], config: ServerConfig | None = None,
               open_new: Callable[[], SearchEngine] | None = None) -> FastAPI:
    """The app over one collection. ``open_engine`` opens it for reading; ``open_new`` opens it for
    writing and creates it when missing (admin jobs). The caller owns neither engine."""
    config = config or ServerConfig()
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        app.state.jobs.stop()
        app.state.holder.close()

    app = FastAPI(title="searchengine", version=_version(), docs_url="/api/docs", redoc_url=None, lifespan=lifespan,
                  openapi_url="/api/openapi.json",
                  description="Semantic image search over one collection. Send an API key as "
                              "`Authorization: Bearer KEY` when the server has keys.")
    holder = EngineHolder(open_engine)
    app.state.config, app.state.holder = config, holder
    app.state.jobs = JobManager(holder, open_writer_for(holder, open_new or open_engine))
    app.state.limiter = RateLimiter(config.rate_per_minute, config.burst)
    _install_middleware(app, config)
    _install_errors(app)
    _routes_search(app)
    _routes_images(app)
    _routes_admin(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={**NOSNIFF, "Cache-Control": "no-cache"})

    return app


def _version() -> str:
    from .. import __version__

    return __version__


def _install_middleware(app: FastAPI, config: ServerConfig) -> None:
    @app.middleware("http")
    async def limits(request: Request, call_next):
        path = request.url.path
        if path.startswith("/api/") and path != "/api/health":
            key = presented_key(request.headers, request.cookies, request.method)
            client = f"key:{key}" if key else f"ip:{request.client.host if request.client else '?'}"
            wait = request.app.state.limiter.take(client)
            if wait > 0:
                return JSONResponse({"detail": "too many requests"}, status_code=429,
                                    headers={"Retry-After": RateLimiter.retry_after(wait)})
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"], allow_credentials=False)
    app.add_middleware(BodyLimit, limit=config.max_upload_bytes)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(E.SearchEngineError)
    async def engine_error(request: Request, exc: E.SearchEngineError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=exc.http_status)


# -- helpers ------------------------------------------------------------------------------------
def _engine(request: Request) -> SearchEngine:
    return request.app.state.holder.get()


def _hit(hit: Hit) -> dict[str, Any]:
    out = hit.to_dict()
    out["thumbnail"] = f"/api/images/{hit.id}/thumbnail"
    out["original"] = f"/api/images/{hit.id}/original"
    return out


def _hits_response(hits: list[Hit], started: float) -> dict[str, Any]:
    return {"hits": [_hit(h) for h in hits], "took_ms": round((time.perf_counter() - started) * 1000, 2)}


def _check(config: ServerConfig, *, k: int | None = None, text: str | None = None) -> None:
    if k is not None and k > config.max_k:
        raise HTTPException(422, f"k is capped at {config.max_k}")
    if text is not None and len(text) > config.max_query_chars:
        raise HTTPException(422, f"queries are capped at {config.max_query_chars} characters")


def _image_id(raw: str) -> int:
    """Image ids in paths are plain integers; anything else (``..``, a path) names no image."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise E.NotFoundError(f"no image with id {raw!r}")
    return int(raw)


def _upload(request: Request, file: UploadFile | None, image_id: Optional[int], engine: SearchEngine):
    """The query image: an upload (decoded under the server's pixel cap) or an indexed image's path."""
    from ..imaging import safe_open

    if (file is None) == (image_id is None):
        raise HTTPException(422, "send either an image file or the id of an indexed image")
    if file is not None:
        data = file.file.read(request.app.state.config.max_upload_bytes + 1)
        return safe_open(data, max_pixels=request.app.state.config.max_pixels)
    return engine.image(image_id).path


def _offered(config: ServerConfig, *, ask: bool = False, caption: bool = False, rerank: bool = False) -> None:
    """A model stage the server was not started with is a client error (400), not an outage."""
    for wanted, have, what, option in ((ask, config.vqa, "question-answering", "--vqa-model"),
                                       (caption, config.caption, "captioning", "--caption-model"),
                                       (rerank, config.rerank, "reranking", "--rerank-model")):
        if wanted and not have:
            raise HTTPException(400, f"this server offers no {what} model (start it with {option})")


def _search(request: Request, p: SearchParams) -> dict[str, Any]:
    config: ServerConfig = request.app.state.config
    _check(config, k=p.k, text=(p.q or "") + (p.query or ""))
    _offered(config, ask=p.ask is not None, caption=p.caption, rerank=p.rerank)
    if not (p.q or p.query):
        raise HTTPException(422, "give q (words) or query (a composed query)")
    started = time.perf_counter()
    hits = _engine(request).search(
        p.q, query=p.query, filters=p.filter, k=p.k, mode=p.mode, keyword_weight=p.keyword_weight,
        min_score=p.min_score, sort=p.sort, dedup=p.dedup, group=p.group, rerank=p.rerank,
        rerank_top=p.rerank_top, caption=p.caption, ask=p.ask)
    return _hits_response(hits, started)


# -- search ---------------------------------------------------------------------------------------
def _routes_search(app: FastAPI) -> None:
    @app.get("/api/health", tags=["status"])
    def health() -> dict[str, str]:
        """Liveness (no key needed)."""
        return {"status": "ok"}

    @app.get("/api/status", tags=["status"], dependencies=[Read])
    def status(request: Request) -> dict[str, Any]:
        """The collection: model, counts, index type."""
        out = _engine(request).status().to_dict()
        out.pop("data_dir", None)  # server paths stay on the server
        out.pop("database", None)
        return out

    @app.get("/api/capabilities", tags=["status"], dependencies=[Read])
    def capabilities(request: Request) -> dict[str, Any]:
        """What this server offers, for clients that adapt (the web page shows the question box only with VQA)."""
        config: ServerConfig = request.app.state.config
        return {"vqa": config.vqa, "caption": config.caption, "rerank": config.rerank, "max_k": config.max_k,
                "max_upload_bytes": config.max_upload_bytes, "thumb_sizes": list(config.thumb_sizes)}

    @app.get("/api/facets", tags=["search"], dependencies=[Read])
    def facets(request: Request) -> dict[str, Any]:
        """Attribute names with their most frequent values (for filter menus)."""
        engine = _engine(request)
        return {k: [{"value": v, "count": n} for v, n in vs] for k, vs in engine.store.facets(engine.collection.id).items()}

    @app.get("/api/search", tags=["search"], dependencies=[Read])
    def search_get(request: Request, params: Annotated[SearchParams, Query()]) -> dict[str, Any]:
        """Text search (words, a composed query, filters, keyword/hybrid modes, product grouping)."""
        return _search(request, params)

    @app.post("/api/search", tags=["search"], dependencies=[Read])
    def search_post(request: Request, params: SearchParams) -> dict[str, Any]:
        """The same search with a JSON body (what a shop backend sends)."""
        return _search(request, params)

    @app.post("/api/search/image", tags=["search"], dependencies=[Read])
    def search_image(request: Request, file: Annotated[Optional[UploadFile], File()] = None,
                     id: Annotated[Optional[int], Form(ge=0, le=MAX_ID)] = None,
                     q: Annotated[Optional[str], Form(max_length=4000)] = None,
                     k: Annotated[int, Form(ge=1, le=1000)] = 10,
                     filter: Annotated[Optional[str], Form(max_length=4000)] = None,
                     group: Annotated[bool, Form()] = True) -> dict[str, Any]:
        """Images like an uploaded image (multipart ``file``) or an indexed one (``id``); ``q`` adds words."""
        _check(request.app.state.config, k=k, text=q)
        engine = _engine(request)
        image = _upload(request, file, id, engine)
        started = time.perf_counter()
        hits = engine.search(q or None, image, filters=filter, k=k, group=group)
        return _hits_response(hits, started)

    @app.post("/api/image-to-text", tags=["search"], dependencies=[Read])
    def image_to_text(request: Request, file: Annotated[Optional[UploadFile], File()] = None,
                      id: Annotated[Optional[int], Form(ge=0, le=MAX_ID)] = None,
                      k: Annotated[int, Form(ge=1, le=1000)] = 10) -> dict[str, Any]:
        """Captions and product titles that fit an uploaded or indexed image."""
        _check(request.app.state.config, k=k)
        engine = _engine(request)
        if id is not None and file is None:
            texts = engine.search_texts(vector=engine.image_vector(id), k=k)
        else:
            texts = engine.search_texts(image=_upload(request, file, id, engine), k=k)
        return {"texts": [t.to_dict() for t in texts]}

    @app.post("/api/classify", tags=["zero-shot"], dependencies=[Read])
    def classify(request: Request, labels: Annotated[str, Form(min_length=1, max_length=4000)],
                 file: Annotated[Optional[UploadFile], File()] = None,
                 id: Annotated[Optional[int], Form(ge=0, le=MAX_ID)] = None) -> dict[str, Any]:
        """Zero-shot label probabilities (relative: they sum to 1 over the labels, not calibrated)."""
        names = [x.strip() for x in labels.split(",") if x.strip()]
        if not 2 <= len(names) <= request.app.state.config.max_labels:
            raise HTTPException(422, f"give 2 to {request.app.state.config.max_labels} comma-separated labels")
        engine = _engine(request)
        ranked = engine.classify([_upload(request, file, id, engine)], names)[0]
        return {"labels": [{"label": lab, "probability": p} for lab, p in ranked]}


# -- one image ------------------------------------------------------------------------------------
def _routes_images(app: FastAPI) -> None:
    @app.get("/api/images/{image_id}", tags=["images"], dependencies=[Read])
    def image(request: Request, image_id: str) -> dict[str, Any]:
        """Everything stored about one image: caption, tags, text in it, EXIF date, product, attributes."""
        engine = _engine(request)
        hit = engine.image(_image_id(image_id))
        out = _hit(hit)
        out.pop("score", None)
        return out

    @app.get("/api/images/{image_id}/similar", tags=["images"], dependencies=[Read])
    def similar(request: Request, image_id: str, k: Annotated[int, Query(ge=1, le=1000)] = 10,
                filter: Annotated[Optional[str], Query(max_length=4000)] = None) -> dict[str, Any]:
        """Images most like an indexed image (itself left out)."""
        _check(request.app.state.config, k=k)
        hits = _engine(request).similar(_image_id(image_id), k, filters=filter, group=False)
        return {"hits": [_hit(h) for h in hits]}

    @app.get("/api/images/{image_id}/thumbnail", tags=["images"], dependencies=[Read],
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(request: Request, image_id: str, size: Annotated[int, Query(ge=1, le=4096)] = 256) -> Response:
        """A JPEG thumbnail (longest side ``size``: one of the server's sizes), cached on disk."""
        from .media import thumbnail_file

        sizes = request.app.state.config.thumb_sizes
        if size not in sizes:
            raise HTTPException(422, f"size must be one of {list(sizes)}")
        path = thumbnail_file(_engine(request), _image_id(image_id), size)
        return FileResponse(path, media_type="image/jpeg",
                            headers={**NOSNIFF, "Cache-Control": "private, max-age=86400"})

    @app.get("/api/images/{image_id}/original", tags=["images"], dependencies=[Read],
             response_class=Response, responses={200: {"content": {"image/*": {}}}})
    def original(request: Request, image_id: str) -> Response:
        """The original file, only from inside the collection's folders; never SVG."""
        from .media import original_file

        path, kind = original_file(_engine(request), _image_id(image_id))
        return FileResponse(path, media_type=kind,
                            headers={**NOSNIFF, "Content-Security-Policy": "default-src 'none'",
                                     "Cache-Control": "private, max-age=3600"})

    @app.get("/api/images/{image_id}/texts", tags=["images"], dependencies=[Read])
    def texts(request: Request, image_id: str, k: Annotated[int, Query(ge=1, le=1000)] = 10) -> dict[str, Any]:
        """Captions and titles nearest to an indexed image (image->text)."""
        _check(request.app.state.config, k=k)
        engine = _engine(request)
        found = engine.search_texts(vector=engine.image_vector(_image_id(image_id)), k=k)
        return {"texts": [t.to_dict() for t in found]}

    @app.post("/api/images/{image_id}/caption", tags=["images"], dependencies=[Read])
    def caption(request: Request, image_id: str) -> dict[str, Any]:
        """A generated caption (cached per content and model; needs the vlm extra and a caption model)."""
        _offered(request.app.state.config, caption=True)
        engine = _engine(request)
        return {"caption": engine.caption([engine.image(_image_id(image_id)).path])[0]}

    @app.post("/api/images/{image_id}/ask", tags=["images"], dependencies=[Read])
    def ask(request: Request, image_id: str, body: AskBody) -> dict[str, Any]:
        """An answer to a question about the image (cached per content, question and model)."""
        _offered(request.app.state.config, ask=True)
        engine = _engine(request)
        return {"answer": engine.ask([engine.image(_image_id(image_id)).path], body.question)[0]}


# -- writes: background jobs ------------------------------------------------------------------------
def _routes_admin(app: FastAPI) -> None:
    def submit(request: Request, kind: str, params: dict, run) -> JSONResponse:
        job = request.app.state.jobs.submit(kind, params, run)
        return JSONResponse(job.to_dict(), status_code=202, headers={"Location": f"/api/jobs/{job.id}"})

    @app.post("/api/admin/index", tags=["admin"], dependencies=[Admin], status_code=202)
    def index(request: Request, body: IndexBody) -> JSONResponse:
        """Index folders or files on the server (incrementally) as a background job; poll ``/api/jobs/{id}``."""
        from indexer import index_folder
        from indexer.scan import normalize_roots

        _check_paths(request, body.paths)
        roots = normalize_roots(body.paths)  # a wrong path is refused now, not in the job
        return submit(request, "index", body.model_dump(), lambda engine, progress: index_folder(
            roots, engine=engine, ocr=body.ocr, retry_errors=body.retry_errors, progress=progress))

    @app.post("/api/admin/import", tags=["admin"], dependencies=[Admin], status_code=202)
    def import_(request: Request, body: ImportBody) -> JSONResponse:
        """Import a product catalog file on the server as a background job."""
        from indexer import import_catalog
        from indexer.catalog import read_catalog

        catalog = read_catalog(body.catalog)  # an unreadable catalog is refused now
        return submit(request, "import", body.model_dump(), lambda engine, progress: import_catalog(
            catalog, engine=engine, prune=body.prune, refresh=body.refresh, progress=progress))

    @app.post("/api/admin/remove", tags=["admin"], dependencies=[Admin], status_code=202)
    def remove(request: Request, body: RemoveBody) -> JSONResponse:
        """Remove the images at or below these paths as a background job."""
        from indexer import remove_paths

        _check_paths(request, body.paths)
        return submit(request, "remove", body.model_dump(),
                      lambda engine, progress: remove_paths(body.paths, engine=engine))

    @app.get("/api/jobs", tags=["admin"], dependencies=[Admin])
    def jobs(request: Request) -> dict[str, Any]:
        """Recent jobs, newest first."""
        return {"jobs": [j.to_dict() for j in request.app.state.jobs.all()]}

    @app.get("/api/jobs/{job_id}", tags=["admin"], dependencies=[Admin])
    def job(request: Request, job_id: int) -> dict[str, Any]:
        """A job's state and progress (``done`` of ``total`` files), then its report or error."""
        found = request.app.state.jobs.get(job_id)
        if found is None:
            raise HTTPException(404, f"no job {job_id}")
        return found.to_dict()


def _check_paths(request: Request, paths: list[str]) -> None:
    if len(paths) > request.app.state.config.max_paths:
        raise HTTPException(422, f"at most {request.app.state.config.max_paths} paths per request")
    if any(not p or "\x00" in p or len(p) > 4096 for p in paths):
        raise HTTPException(422, "paths must be non-empty, at most 4096 characters, without NUL")
