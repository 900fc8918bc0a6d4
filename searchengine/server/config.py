"""What the HTTP server allows: keys, limits, origins. Safe defaults; every field has an env variable."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from ..config import StageModels
from ..errors import ConfigError

__all__ = ["ServerConfig", "is_loopback", "split_list"]


def split_list(raw: str | None) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: keys and origins as the environment and CLI give them."""
    return tuple(k.strip() for k in (raw or "").split(",") if k.strip())


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


@dataclass(frozen=True)
class ServerConfig:
    """Limits and access rules of one server.

    ``read_keys`` open the search endpoints, ``admin_keys`` everything (writes included). With no
    keys at all, every endpoint is open, which :meth:`check_bind` allows on loopback only.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    read_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()  # none: no CORS headers at all
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # an uploaded query image above this is refused before decoding
    max_k: int = 200
    max_query_chars: int = 1000
    max_labels: int = 100
    max_paths: int = 100  # paths per admin request
    rate_per_minute: int = 600  # per key (or per client address without one); 0: no limit
    burst: int = 120
    thumb_sizes: tuple[int, ...] = (128, 256, 512)
    vqa: bool = False  # the web page offers questions about a result (a VQA model is configured)
    caption: bool = False  # generated captions are offered (a captioning model is configured)
    rerank: bool = False  # reranking is offered (a reranker is configured)

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.max_k < 1 or self.max_query_chars < 1 or self.burst < 1:
            raise ConfigError("server limits must be positive")

    @property
    def keyed(self) -> bool:
        return bool(self.read_keys or self.admin_keys)

    def check_bind(self) -> None:
        """Refuse to serve beyond this machine without API keys."""
        if not is_loopback(self.host) and not self.keyed:
            raise ConfigError(f"refusing to listen on {self.host} without API keys: set SEARCHENGINE_READ_KEYS "
                              "and SEARCHENGINE_ADMIN_KEYS (comma-separated), or bind 127.0.0.1")

    @classmethod
    def from_env(cls, **overrides: object) -> "ServerConfig":
        """Settings from ``SEARCHENGINE_*`` variables, then ``overrides`` (``None`` values ignored)."""
        env: dict[str, object] = {
            "read_keys": split_list(os.environ.get("SEARCHENGINE_READ_KEYS")),
            "admin_keys": split_list(os.environ.get("SEARCHENGINE_ADMIN_KEYS")),
            "cors_origins": split_list(os.environ.get("SEARCHENGINE_CORS_ORIGINS")),
            "max_upload_bytes": _int("SEARCHENGINE_MAX_UPLOAD_BYTES", cls.max_upload_bytes),
            "rate_per_minute": _int("SEARCHENGINE_RATE_LIMIT", cls.rate_per_minute),
            **StageModels.from_env().offered(),
        }
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)  # type: ignore[arg-type]

