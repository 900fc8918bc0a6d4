"""Settings: where data lives, which model, which device, which index.

Every field has an environment variable (``SEARCHENGINE_*``) and a CLI option; explicit
arguments beat the environment, which beats the defaults below.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError

__all__ = ["Settings", "StageModels", "DEFAULT_MODEL", "LITE_MODEL", "DEFAULT_INDEX_FACTORY", "PRECISIONS", "default_data_dir"]

DEFAULT_MODEL = "ViT-B-32:laion2b_s34b_b79k"
#: The offline model new collections fall back to when no model is named and DEFAULT_MODEL cannot be loaded.
LITE_MODEL = "lite"
#: exact search below 100,000 vectors, a tuned inverted file above (see searchengine.vectors.choose_factory)
DEFAULT_INDEX_FACTORY = "auto"
#: ``auto``: fp16 on CUDA; bf16 on CPUs with AMX when the model stays within cosine 0.99 of fp32; else fp32
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_data_dir() -> Path:
    """``$SEARCHENGINE_HOME``, else ``$XDG_DATA_HOME/searchengine``, else ``~/.local/share/searchengine``."""
    home = os.environ.get("SEARCHENGINE_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "searchengine"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class StageModels:
    """The models of the optional stages, as named by the user; ``None``: the stage's preset
    (:data:`searchengine.models.registry.STAGE_DEFAULTS`; reranking has none, so it must be named)."""

    rerank: str | None = None
    caption: str | None = None
    vqa: str | None = None

    @classmethod
    def from_env(cls, **overrides: str | None) -> "StageModels":
        """From ``SEARCHENGINE_RERANK_MODEL`` / ``_CAPTION_MODEL`` / ``_VQA_MODEL``, then ``overrides``
        (``None`` values ignored). Read once, at the edge (CLI, server start, ``Settings.from_env``)."""
        env = {task: os.environ.get(f"SEARCHENGINE_{task.upper()}_MODEL") or None
               for task in ("rerank", "caption", "vqa")}
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)

    def offered(self) -> dict[str, bool]:
        """Which stages have a model named (the server offers only those)."""
        return {"rerank": self.rerank is not None, "caption": self.caption is not None, "vqa": self.vqa is not None}


@dataclass(frozen=True)
class Settings:
    """Resolved configuration of one engine instance.

    ``model`` is ``None`` to mean "the collection's model" (or :data:`DEFAULT_MODEL` for a
    new collection). ``db_url`` is ``None`` for the SQLite file inside ``data_dir``.
    """

    data_dir: Path = field(default_factory=default_data_dir)
    db_url: str | None = None
    collection: str = "default"
    model: str | None = None
    device: str = "auto"
    #: model precision: auto (fp16 on CUDA, bf16 on AMX CPUs when it stays within cosine 0.99 of fp32), fp32, bf16, fp16
    precision: str = "auto"
    index_factory: str = DEFAULT_INDEX_FACTORY
    batch_size: int = 0  # 0: chosen for the device (see batch_for)
    workers: int = -1  # -1: choose from the core count; 0: decode in the main process
    max_pixels: int = 100_000_000
    #: seconds one file may take in a decode worker before the worker is killed (0: no limit)
    decode_timeout: float = 60.0
    #: MB a decode worker may map beyond its start (RLIMIT_AS); -1: 40 bytes a pixel of max_pixels, at least 1 GiB; 0: none
    decode_memory_mb: int = -1
    #: models of the rerank, caption and VQA stages (``None`` each: the stage's preset)
    stage_models: StageModels = field(default_factory=StageModels)

    def __post_init__(self) -> None:
        if not _COLLECTION_NAME.match(self.collection):
            raise ConfigError(
                f"invalid collection name {self.collection!r}: use letters, digits, '_', '-', '.' "
                "(at most 64 characters)"
            )
        if self.batch_size < 0:
            raise ConfigError("batch size must be at least 1 (or 0 to choose for the device)")
        if self.max_pixels < 1:
            raise ConfigError("max pixels must be at least 1")
        if not self.decode_timeout >= 0:
            raise ConfigError("the decode timeout must be 0 (none) or a number of seconds")
        if self.decode_memory_mb < -1:
            raise ConfigError("the decode memory limit must be -1 (automatic), 0 (none) or a number of MB")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        """Settings from ``SEARCHENGINE_*`` variables, then ``overrides`` (``None`` values ignored)."""
        env: dict[str, object] = {
            "data_dir": default_data_dir(),
            "db_url": os.environ.get("SEARCHENGINE_DB") or None,
            "collection": os.environ.get("SEARCHENGINE_COLLECTION") or "default",
            "model": os.environ.get("SEARCHENGINE_MODEL") or None,
            "device": os.environ.get("SEARCHENGINE_DEVICE") or "auto",
            "precision": os.environ.get("SEARCHENGINE_PRECISION") or "auto",
            "index_factory": os.environ.get("SEARCHENGINE_INDEX_FACTORY") or DEFAULT_INDEX_FACTORY,
            "batch_size": _env_int("SEARCHENGINE_BATCH_SIZE", 0),
            "workers": _env_int("SEARCHENGINE_WORKERS", -1),
            "decode_timeout": _env_float("SEARCHENGINE_DECODE_TIMEOUT", 60.0),
            "decode_memory_mb": _env_int("SEARCHENGINE_DECODE_MEMORY_MB", -1),
            "stage_models": StageModels.from_env(),
        }
        env.update({k: v for k, v in overrides.items() if v is not None})
        if not isinstance(env["data_dir"], Path):
            env["data_dir"] = Path(str(env["data_dir"])).expanduser()
        return cls(**env)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> "Settings":
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'searchengine.db').resolve()}"

    @property
    def collection_dir(self) -> Path:
        """Folder of the collection's derived files (the faiss index)."""
        return self.data_dir / "collections" / self.collection

    def batch_for(self, device: str) -> int:
        """Images per model call: as set, else 256 on a GPU (it needs large batches to be busy) and 32
        on CPU (measured on 2 cores with bf16 ViT-B-32: 32 -> 128 images/s, 64 -> 132)."""
        if self.batch_size:
            return self.batch_size
        return 256 if device.startswith("cuda") else 32

    def decode_memory(self) -> int:
        """Bytes a decode worker may map beyond its start; 0: no limit. Automatic: 40 bytes a pixel of
        ``max_pixels`` (4 GB at the default 100M), at least 1 GiB: the worst legal image measured
        (a float grey TIFF at the cap) peaked at 2.0 GB resident, a 16-bit grey or RGBA PNG at 1.2 GB."""
        if self.decode_memory_mb >= 0:
            return self.decode_memory_mb << 20
        return max(1 << 30, 40 * self.max_pixels)

    def decode_workers(self) -> int:
        if self.workers >= 0:
            return self.workers
        cores = os.cpu_count() or 1
        return max(1, min(8, cores - 1)) if cores > 2 else cores
