"""Old module path of the in-memory vector index, kept as a re-export: the code lives in
:mod:`searchengine.index` (memory, factory, base) and :mod:`searchengine._fs`."""

from __future__ import annotations

from ._fs import file_checksum, remove_stale_temps, temp_files
from .index.base import FALLBACK_NOTE, RERANK_FACTOR, is_lossy, verify_checksum, write_index
from .index.base import save_atomic as write_atomic
from .index.factory import (
    AUTO,
    AUTO_EXACT_LIMIT,
    AUTO_TARGET_RECALL,
    choose_factory,
    needs_rechoice,
    normalize_factory,
)
from .index.factory import nlist_for as _nlist
from .index.memory import VectorIndex

__all__ = ["VectorIndex", "write_index", "write_atomic", "file_checksum", "verify_checksum", "normalize_factory",
           "choose_factory", "needs_rechoice", "is_lossy", "remove_stale_temps", "temp_files", "AUTO",
           "AUTO_EXACT_LIMIT", "AUTO_TARGET_RECALL", "FALLBACK_NOTE", "RERANK_FACTOR", "_nlist"]
