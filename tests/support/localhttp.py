"""A local HTTP server for URL tests: no proxy, a background thread, shut down afterwards."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from typing import Iterator, TypeVar

Server = TypeVar("Server", bound=ThreadingHTTPServer)
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


@contextmanager
def serving(srv: Server, monkeypatch) -> Iterator[Server]:
    """Serve ``srv`` (bound to 127.0.0.1 port 0) until the block ends; ``srv.url`` is its base URL."""
    for key in PROXY_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
