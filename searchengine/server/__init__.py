"""The HTTP API and web page (the ``server`` extra: FastAPI + uvicorn).

    >>> from searchengine.server import create_app, ServerConfig
    >>> app = create_app(lambda: SearchEngine.open("photos"), ServerConfig())

``searchengine serve`` runs the same app with uvicorn. Importing this package needs FastAPI;
the rest of the engine never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..engine import SearchEngine
from ..errors import ConfigError
from .config import ServerConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["create_app", "ServerConfig", "serve", "app_for"]


def _require() -> None:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (uploads)
    except ImportError:
        raise ConfigError("the HTTP server needs the server extra: pip install 'searchengine[server]'") from None


def create_app(*args: Any, **kwargs: Any) -> "FastAPI":
    """See :func:`searchengine.server.app.create_app`."""
    _require()
    from .app import create_app as build

    return build(*args, **kwargs)


def app_for(settings: Settings, config: ServerConfig, model: str | None = None) -> "FastAPI":
    """The app over the collection named in ``settings`` (created by the first admin index job if missing)."""
    return create_app(lambda: SearchEngine.open(settings=settings, writable=False),
                      config,
                      lambda: SearchEngine.open(settings=settings.with_(model=model) if model else settings,
                                                create=True, writable=True))


def serve(settings: Settings, config: ServerConfig, model: str | None = None, log_level: str = "info") -> None:
    """Run the server until interrupted (refuses a non-loopback address without API keys)."""
    config.check_bind()
    app = app_for(settings, config, model)
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("the HTTP server needs the server extra: pip install 'searchengine[server]'") from None
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, server_header=False,
                limit_concurrency=256, timeout_keep_alive=5)
