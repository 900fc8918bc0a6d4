"""Access control and limits: API keys, a per-client rate limit, a request body cap, path containment."""

from __future__ import annotations

import hmac
import json
import math
import os
import stat
import threading
import time
from typing import Literal

from .config import ServerConfig

__all__ = ["Access", "KEY_COOKIE", "access_of", "presented_key", "RateLimiter", "BodyLimit", "contained_file"]

Access = Literal["none", "read", "admin"]
KEY_COOKIE = "searchengine_key"


def _matches(key: str, keys: tuple[str, ...]) -> bool:
    return any(hmac.compare_digest(key.encode(), k.encode()) for k in keys)


def presented_key(headers, cookies, method: str) -> str | None:
    """The key a request carries: ``Authorization: Bearer``, ``X-API-Key``, or (GET only) the page's cookie.

    The cookie lets ``<img>`` tags load thumbnails; it is never accepted for writes, so a foreign
    page cannot make a browser change anything.
    """
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if headers.get("x-api-key"):
        return headers["x-api-key"].strip()
    if method in ("GET", "HEAD"):
        return cookies.get(KEY_COOKIE) or None
    return None


def access_of(config: ServerConfig, key: str | None) -> Access | None:
    """What a key opens: ``admin``, ``read``, or None for a wrong key ("none": no key presented)."""
    if not config.keyed:
        return "admin"  # no keys configured: loopback only (ServerConfig.check_bind)
    if key is None:
        return "none"
    if _matches(key, config.admin_keys):
        return "admin"
    if _matches(key, config.read_keys):
        return "read"
    return None


class RateLimiter:
    """A token bucket per client: ``burst`` requests at once, refilled at ``per_minute / 60`` per second."""

    def __init__(self, per_minute: int, burst: int, clock=time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 when the request may go on, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                if len(self._buckets) > 100_000:  # forget idle clients (their buckets are full again)
                    self._buckets = {c: b for c, b in self._buckets.items() if now - b[1] < self.burst / self.rate}
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413, whether or not it declares its length."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _too_large(send, self.limit)
        seen = 0
        answered = False  # the 413 went out: whatever the app still sends is dropped

        async def counting_receive():
            nonlocal seen, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # answer now: frameworks turn an exception raised while parsing into a 400
                    answered = True
                    await _too_large(send, self.limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not answered:
                await send(message)

        await self.app(scope, counting_receive, guarded_send)


async def _too_large(send, limit: int) -> None:
    body = json.dumps({"detail": f"request body over the limit of {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def contained_file(path: str, roots: list[str]) -> str | None:
    """``path``'s resolved real path when it is a regular file inside one of ``roots`` (resolved too), else None.

    Symlinks are followed before the check, so a link that leads out of every root is refused.
    """
    try:
        real = os.path.realpath(path, strict=True)
        if not stat.S_ISREG(os.stat(real).st_mode):
            return None
    except (OSError, ValueError):
        return None
    for root in roots:
        try:
            top = os.path.realpath(root, strict=True)
        except (OSError, ValueError):
            continue
        if real == top or real.startswith(top.rstrip(os.sep) + os.sep):
            return real
    return None
