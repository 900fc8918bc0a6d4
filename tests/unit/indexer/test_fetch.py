from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from indexer.fetch import FetchOptions, cache_path, fetch, fetch_many
from searchengine.errors import DownloadError
from tests.support.localhttp import serving


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()
BIG = b"\x89PNG" + b"x" * 20_000
FAST = FetchOptions(timeout=0.3, retries=2, backoff=0, max_bytes=10_000, workers=4)


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args) -> None:
        pass

    def send(self, body: bytes, kind: str | None = "image/png", length: bool = True, status: int = 200) -> None:
        self.send_response(status)
        if kind:
            self.send_header("Content-Type", kind)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        n = self.server.hit(path)
        if path in ("/img.png", "/caf%C3%A9%201.png"):
            self.send(PNG)
        elif path == "/untyped":
            self.send(PNG, kind=None)
        elif path == "/flaky":  # 500, then the image
            self.send(PNG) if n > 1 else self.send_error(500)
        elif path == "/busy":  # 429, then the image
            self.send(PNG) if n > 1 else self.send_error(429)
        elif path == "/down":
            self.send_error(503)
        elif path == "/forbidden":
            self.send_error(403)
        elif path == "/slow":  # no response within the timeout
            time.sleep(1.0)
            self.send(PNG)
        elif path == "/stall":  # half a body, then silence
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG[:20])
            self.wfile.flush()
            time.sleep(1.0)
        elif path == "/big":
            self.send(BIG)
        elif path == "/huge-claim":  # announces 2 MiB, sends a little, then waits
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(2 * 1024 * 1024))
            self.end_headers()
            self.wfile.write(PNG)
            self.wfile.flush()
            time.sleep(1.0)
        elif path == "/big-unsized":
            self.send(BIG, length=False)
        elif path == "/html":
            self.send(b"<html>nope</html>", kind="text/html; charset=utf-8")
        elif path == "/json":
            self.send(b"{}", kind="application/json")
        elif path == "/empty":
            self.send(b"")
        elif path == "/redirect":
            self.redirect("/img.png")
        elif path == "/loop":
            self.redirect("/loop")
        elif path == "/to-ftp":
            self.redirect("ftp://ftp.example.com/a.png")
        else:
            self.send_error(404)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()

    def hit(self, path: str) -> int:
        with self.lock:
            self.hits[path] += 1
            return self.hits[path]

    def handle_error(self, request, client_address) -> None:
        pass  # the client hung up on a slow route: expected


@pytest.fixture
def server(monkeypatch):
    with serving(Server(), monkeypatch) as srv:
        yield srv


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def leftovers(cache: Path) -> list[str]:
    return sorted(os.listdir(cache)) if cache.exists() else []


def failure(url: str, cache: Path, options: FetchOptions = FAST) -> str:
    with pytest.raises(DownloadError) as info:
        fetch(url, cache, options)
    assert leftovers(cache) == []  # no partial or temporary file
    message = str(info.value)
    assert message.startswith(f"cannot download {url}: ")
    return message[len(f"cannot download {url}: "):]


def test_cache_path_is_a_hash_with_the_image_extension(tmp_path):
    a = cache_path(tmp_path, "https://x.example/a/B.JPG?w=100")
    assert a.parent == tmp_path and a.suffix == ".jpg" and len(a.stem) == 32
    assert cache_path(tmp_path, "https://x.example/a/B.JPG?w=100") == a
    assert cache_path(tmp_path, "https://x.example/a/B.JPG?w=200") != a
    assert cache_path(tmp_path, "https://x.example/product/42").suffix == ".img"
    assert cache_path(tmp_path, "https://x.example/page.html").suffix == ".img"


def test_fetch_downloads_once_then_serves_from_the_cache(server, cache):
    url = server.url + "/img.png"
    path = fetch(url, cache, FAST)
    assert path == cache_path(cache, url) and path.read_bytes() == PNG
    assert fetch(url, cache, FAST) == path
    assert server.hits["/img.png"] == 1  # the second fetch made no request
    assert leftovers(cache) == [path.name]


def test_non_ascii_and_spaces_are_percent_encoded(server, cache):
    url = server.url + "/café 1.png"
    assert fetch(url, cache, FAST) == cache_path(cache, url) and server.hits["/caf%C3%A9%201.png"] == 1


def test_missing_content_type_is_accepted_and_redirects_are_followed(server, cache):
    assert fetch(server.url + "/untyped", cache, FAST).read_bytes() == PNG
    assert fetch(server.url + "/redirect", cache, FAST).read_bytes() == PNG
    assert server.hits["/redirect"] == 1 and server.hits["/img.png"] == 1


def test_http_errors_are_not_retried_except_5xx_and_429(server, cache):
    assert failure(server.url + "/missing", cache) == "HTTP 404 Not Found"
    assert failure(server.url + "/forbidden", cache) == "HTTP 403 Forbidden"
    assert server.hits["/missing"] == 1 and server.hits["/forbidden"] == 1
    assert failure(server.url + "/down", cache) == "HTTP 503 Service Unavailable (3 attempts)"
    assert server.hits["/down"] == 3


def test_500_then_200_and_429_then_200_are_retried(server, cache):
    assert fetch(server.url + "/flaky", cache, FAST).read_bytes() == PNG
    assert fetch(server.url + "/busy", cache, FAST).read_bytes() == PNG
    assert server.hits["/flaky"] == 2 and server.hits["/busy"] == 2


def test_timeouts_before_the_headers_and_in_the_body(server, cache):
    started = time.perf_counter()
    options = FetchOptions(timeout=0.3, retries=1, backoff=0)
    assert failure(server.url + "/slow", cache, options) == "timed out after 0.3 s (2 attempts)"
    assert server.hits["/slow"] == 2
    assert failure(server.url + "/stall", cache, FetchOptions(timeout=0.3, retries=0)) == "timed out after 0.3 s"
    assert time.perf_counter() - started < 2.0


def test_size_limit_with_and_without_content_length(server, cache):
    assert failure(server.url + "/big", cache) == "larger than the 10,000-byte limit (20,004 bytes)"
    assert failure(server.url + "/big-unsized", cache) == "larger than the 10,000-byte limit"
    assert server.hits["/big"] == 1 and server.hits["/big-unsized"] == 1  # not retried
    # the announced length is checked before any of the body is read
    one_mb = FetchOptions(timeout=0.3, retries=0, max_bytes=1024 * 1024)
    assert failure(server.url + "/huge-claim", cache, one_mb) == "larger than the 1 MB limit (2,097,152 bytes)"


def test_an_interrupted_download_leaves_no_file(server, cache, monkeypatch):
    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        fetch(server.url + "/img.png", cache, FAST)
    assert leftovers(cache) == []


def test_an_unwritable_cache_is_a_download_error_without_retries(server, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("x")
    with pytest.raises(DownloadError, match="cannot write to the cache folder"):
        fetch(server.url + "/img.png", blocked, FAST)
    assert server.hits["/img.png"] == 0


def test_non_image_content_types_are_refused(server, cache):
    assert failure(server.url + "/html", cache) == "the server sent text/html, not an image"
    assert failure(server.url + "/json", cache) == "the server sent application/json, not an image"
    assert failure(server.url + "/empty", cache) == "the server sent an empty response"


def test_redirect_limits_and_schemes(server, cache):
    assert failure(server.url + "/loop", cache) == "too many redirects (more than 5)"
    assert server.hits["/loop"] == 6
    assert failure(server.url + "/to-ftp", cache) == (
        "redirected to ftp://ftp.example.com/a.png, which is not an http(s) URL")


def test_connection_refused_and_bad_schemes(cache):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/a.png"
    assert failure(url, cache, FetchOptions(timeout=0.3, retries=1, backoff=0)) == "connection refused (2 attempts)"
    for url in ("ftp://x.example/a.png", "file:///etc/passwd", "a.png"):
        assert failure(url, cache) == "only http and https URLs are supported"


def test_fetch_many_dedupes_reports_progress_and_never_raises(server, cache):
    ok, missing, html = server.url + "/img.png", server.url + "/missing", server.url + "/html"
    calls = []
    result = fetch_many([ok, missing, ok, html, "ftp://x/y.png", ok], cache, FAST, progress=calls.append)
    assert list(result) == [ok, missing, html, "ftp://x/y.png"]
    assert result[ok] == cache_path(cache, ok) and result[ok].read_bytes() == PNG
    assert isinstance(result[missing], DownloadError) and "HTTP 404 Not Found" in str(result[missing])
    assert "text/html" in str(result[html]) and "only http and https" in str(result["ftp://x/y.png"])
    assert calls == [1, 1, 1, 1] and server.hits["/img.png"] == 1
    assert fetch_many([], cache) == {}
    assert leftovers(cache) == [result[ok].name]
