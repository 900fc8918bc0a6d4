"""Vector indexes behind one interface (:class:`BaseIndex`): the in-memory faiss index
(:class:`VectorIndex`) and the memory-mapped on-disk inverted file (:class:`OnDiskIndex`), the
factory-string policy (``auto`` by size, ``ondisk:``), the one ``nprobe`` calibrator, and the build
of on-disk indexes. Importing it loads no faiss.
"""

from __future__ import annotations

from .base import FALLBACK_NOTE, RERANK_FACTOR, BaseIndex, is_lossy, verify_checksum, write_index
from .calibrate import CALIBRATION_QUERIES, ExactTop, tune_nprobe
from .factory import (
    AUTO,
    AUTO_EXACT_LIMIT,
    AUTO_TARGET_RECALL,
    ONDISK_PREFIX,
    base_factory,
    choose_factory,
    is_ondisk,
    make_index,
    needs_rechoice,
    normalize_factory,
)
from .memory import VectorIndex
from .ondisk import OnDiskIndex, OnDiskRecord, remove_unused_files, verify_data_file
from .ondisk_build import BuildOptions, BuildStats, TooFewVectorsError, build_from_store, build_ondisk

__all__ = [
    "BaseIndex", "VectorIndex", "OnDiskIndex", "OnDiskRecord",
    "AUTO", "AUTO_EXACT_LIMIT", "AUTO_TARGET_RECALL", "ONDISK_PREFIX", "RERANK_FACTOR", "FALLBACK_NOTE",
    "CALIBRATION_QUERIES", "choose_factory", "needs_rechoice", "normalize_factory", "is_ondisk", "base_factory",
    "make_index", "is_lossy", "tune_nprobe", "ExactTop", "verify_checksum", "verify_data_file", "write_index",
    "remove_unused_files", "BuildOptions", "BuildStats", "TooFewVectorsError", "build_ondisk", "build_from_store",
]
