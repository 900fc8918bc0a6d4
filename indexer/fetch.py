"""Download image URLs into a content cache: one file per URL, written atomically.

A cached URL is never fetched again. A download goes to a temporary file in the cache
folder and is renamed into place only when complete, so the final name never holds a
partial file. Failures raise :class:`DownloadError` with one sentence naming the URL.

    >>> paths = fetch_many(urls, Path("~/.cache/images").expanduser())
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import quote, urlsplit

from searchengine._fs import AtomicFile
from searchengine.errors import DownloadError

__all__ = ["FetchOptions", "cache_path", "fetch", "fetch_many"]

#: URL path suffixes kept on the cached file; anything else is cached as ".img".
CACHE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif",
                              ".avif"})
MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
_URL_SAFE = "/:?#[]@!$&'()*+,;=%~"  # what stays as is; spaces and non-ASCII are percent-encoded (UTF-8)


@dataclass(frozen=True)
class FetchOptions:
    timeout: float = 20.0  # seconds, per attempt (connect and each read)
    max_bytes: int = 50 * 1024 * 1024
    retries: int = 2  # extra attempts for timeouts, connection errors, HTTP 5xx and 429
    backoff: float = 0.5  # sleep backoff * 2**attempt between attempts
    workers: int = 8
    user_agent: str = "searchengine/0.1 (+image search)"


class _Retry(Exception):
    """A failure worth another attempt."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class _Fail(Exception):
    """A failure that another attempt would not fix."""


def cache_path(cache_dir: Path, url: str) -> Path:
    """Where ``url`` is cached: a blake2b-128 hex name, with the URL's image suffix or ".img"."""
    digest = hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    try:
        ext = os.path.splitext(urlsplit(url).path)[1].lower()
    except ValueError:
        ext = ""
    return Path(cache_dir) / f"{digest}{ext if ext in CACHE_EXTENSIONS else '.img'}"


def fetch(url: str, cache_dir: Path, options: FetchOptions = FetchOptions()) -> Path:
    """The cached file of ``url``, downloaded first unless already cached (then no network access)."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme not in ("http", "https"):
        raise DownloadError(f"cannot download {url}: only http and https URLs are supported")
    target = cache_path(cache_dir, url)
    if target.exists():
        return target
    attempts = max(1, options.retries + 1)
    for attempt in range(attempts):
        try:
            _download(url, target, options)
            return target
        except _Fail as exc:
            raise DownloadError(f"cannot download {url}: {exc}") from None
        except _Retry as exc:
            if attempt + 1 == attempts:
                tries = f" ({attempts} attempts)" if attempts > 1 else ""
                what = f"timed out after {options.timeout:g} s" if exc.timeout else str(exc)
                raise DownloadError(f"cannot download {url}: {what}{tries}") from None
            time.sleep(options.backoff * 2**attempt)
    raise AssertionError("unreachable")


def fetch_many(urls: Iterable[str], cache_dir: Path, options: FetchOptions = FetchOptions(),
               progress: Callable[[int], None] | None = None) -> dict[str, Path | DownloadError]:
    """Fetch each distinct URL (in a thread pool); the dict holds its path or its error, in input order."""
    unique = list(dict.fromkeys(urls))
    done: dict[str, Path | DownloadError] = {}
    if not unique:
        return done
    pool = ThreadPoolExecutor(max_workers=max(1, min(options.workers, len(unique))), thread_name_prefix="fetch")
    try:
        futures = {pool.submit(fetch, url, cache_dir, options): url for url in unique}
        for future in as_completed(futures):
            url = futures[future]
            try:
                done[url] = future.result()
            except DownloadError as exc:
                done[url] = exc
            except Exception as exc:  # one URL never fails the batch
                done[url] = DownloadError(f"cannot download {url}: {exc}")
            if progress is not None:
                progress(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C, queued URLs are dropped, running ones end
    return {url: done[url] for url in unique}


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows at most MAX_REDIRECTS redirects, to http(s) URLs only."""

    max_repeats = max_redirections = 1000  # our own count below is the limit

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise _Fail(f"redirected to {newurl}, which is not an http(s) URL")
        hops = getattr(req, "_hops", 0) + 1
        if hops > MAX_REDIRECTS:
            raise _Fail(f"too many redirects (more than {MAX_REDIRECTS})")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new._hops = hops  # type: ignore[attr-defined]
        return new


def _size(n: int) -> str:
    return f"{n / 1024**2:g} MB" if n % 1024**2 == 0 else f"{n:,}-byte"


@contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """Turns a local file error into a failure that is not retried (and not blamed on the network)."""
    try:
        yield
    except OSError as exc:
        raise _Fail(f"cannot write to the cache folder {folder}: {exc.strerror or exc}") from None


def _download(url: str, target: Path, options: FetchOptions) -> None:
    """One attempt: stream ``url`` into a temporary file, then rename it to ``target``."""
    folder = target.parent
    with _writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(quote(url, safe=_URL_SAFE), headers={"User-Agent": options.user_agent,
                                                   "Accept": "image/*,*/*;q=0.5"})
    opener = urllib.request.build_opener(_Redirects)
    limit = f"larger than the {_size(options.max_bytes)} limit"
    try:
        with opener.open(request, timeout=options.timeout) as response:
            kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if kind.startswith("text/") or kind == "application/json" or kind.endswith("+json"):
                raise _Fail(f"the server sent {kind}, not an image")
            length = response.headers.get("Content-Length")
            if length and length.strip().isdigit() and int(length) > options.max_bytes:
                raise _Fail(f"{limit} ({int(length):,} bytes)")
            with _writing(folder):
                out = AtomicFile(target, durable=False)  # a cache: atomic, not fsynced
            with out:  # removed on any error
                size = 0
                while chunk := response.read(_CHUNK):  # network errors: handled below
                    size += len(chunk)
                    if size > options.max_bytes:
                        raise _Fail(limit)
                    with _writing(folder):
                        out.file.write(chunk)
                if size == 0:
                    raise _Fail("the server sent an empty response")
                with _writing(folder):
                    out.commit()
    except urllib.error.HTTPError as exc:
        exc.close()
        message = f"HTTP {exc.code} {exc.reason}".rstrip()
        if exc.code >= 500 or exc.code == 429:
            raise _Retry(message) from None
        raise _Fail(message) from None
    except urllib.error.URLError as exc:
        raise _classify(exc.reason) from None
    except (_Fail, _Retry):
        raise
    except ValueError as exc:  # http.client.InvalidURL and the like
        raise _Fail(f"invalid URL ({exc})") from None
    except (OSError, http.client.HTTPException) as exc:  # raised while reading the status line or the body
        raise _classify(exc) from None


def _classify(reason: object) -> _Retry | _Fail:
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return _Retry("timed out", timeout=True)
    if isinstance(reason, ConnectionRefusedError):
        return _Retry("connection refused")
    if isinstance(reason, ssl.SSLError):
        return _Fail(f"TLS error: {reason}")
    if isinstance(reason, socket.gaierror):
        return _Retry(f"cannot resolve the host name ({reason.strerror or reason})")
    if isinstance(reason, OSError):
        return _Retry(f"connection error: {reason.strerror or reason}")
    if isinstance(reason, http.client.HTTPException):
        return _Retry(f"bad HTTP response: {type(reason).__name__} {reason}".rstrip())
    return _Fail(str(reason))
