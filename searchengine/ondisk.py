"""Old module path of the on-disk vector index, kept as a re-export: the code lives in
:mod:`searchengine.index` (ondisk, ondisk_build, factory)."""

from __future__ import annotations

from .index.base import verify_checksum
from .index.calibrate import ExactTop as _ExactTop
from .index.factory import ONDISK_PREFIX, base_factory, is_ondisk
from .index.ondisk import VERIFIED_SUFFIX, OnDiskIndex, OnDiskRecord, remove_unused_files, verify_data_file
from .index.ondisk_build import BuildOptions, BuildStats, TooFewVectorsError, build_from_store, build_ondisk

__all__ = ["ONDISK_PREFIX", "OnDiskIndex", "TooFewVectorsError", "OnDiskRecord", "BuildOptions", "BuildStats",
           "is_ondisk", "base_factory", "build_ondisk", "build_from_store", "remove_unused_files", "verify_data_file",
           "verify_checksum", "VERIFIED_SUFFIX", "_ExactTop"]
