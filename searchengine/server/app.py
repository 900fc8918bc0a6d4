"""The FastAPI application: the HTTP API under ``/api`` and the web page at ``/``.

Build it with :func:`create_app`; ``searchengine serve`` runs it with uvicorn. This module owns the
wiring (state, middleware, error handler, routers); the routes live in :mod:`.routes`.
"""

from __future__ import annotations

import contextlib
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .. import errors as E
from ..engine import SearchEngine
from .config import ServerConfig
from .jobs import EngineHolder, JobManager, open_writer_for
from .routes import admin, images, pages, search, status
from .security import BodyLimit, RateLimiter, presented_key

__all__ = ["create_app"]


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

    app = FastAPI(title="searchengine", version=__version__, docs_url="/api/docs", redoc_url=None,
                  lifespan=lifespan, openapi_url="/api/openapi.json",
                  description="Semantic image search over one collection. Send an API key as "
                              "`Authorization: Bearer KEY` when the server has keys.")
    holder = EngineHolder(open_engine)
    app.state.config, app.state.holder = config, holder
    app.state.jobs = JobManager(holder, open_writer_for(holder, open_new or open_engine))
    app.state.limiter = RateLimiter(config.rate_per_minute, config.burst)
    _install_middleware(app, config)
    _install_errors(app)
    app.include_router(status.router)
    app.include_router(search.router)
    app.include_router(images.router)
    app.include_router(admin.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    app.include_router(pages.router)
    return app


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
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"], allow_credentials=False)
    app.add_middleware(BodyLimit, limit=config.max_upload_bytes)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(E.SearchEngineError)
    async def engine_error(request: Request, exc: E.SearchEngineError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=exc.http_status)
