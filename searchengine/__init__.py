"""Semantic image search: CLIP embeddings in a FAISS index with a SQL metadata store.

    >>> from searchengine import SearchEngine
    >>> with SearchEngine.open("default") as engine:
    ...     hits = engine.search_text("a dog on a beach", k=5)

Importing this package loads no model and touches no file; heavy parts load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    CollectionNotFoundError,
    ConfigError,
    ImageDecodeError,
    ModelError,
    ModelLoadError,
    ModelMismatchError,
    QueryError,
    SearchEngineError,
    StoreError,
    VectorIndexError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "SearchEngine", "Hit", "CollectionStatus", "Settings",
    "SearchEngineError", "ConfigError", "ModelError", "ModelLoadError", "ModelMismatchError",
    "StoreError", "CollectionNotFoundError", "VectorIndexError", "ImageDecodeError", "QueryError",
]

_LAZY = {"SearchEngine": "engine", "Hit": "engine", "CollectionStatus": "engine", "Settings": "config"}

if TYPE_CHECKING:  # pragma: no cover
    from .config import Settings
    from .engine import CollectionStatus, Hit, SearchEngine


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'searchengine' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
