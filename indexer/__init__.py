"""Ingestion: scan folders, diff against the store, decode in workers, encode in batches, write.

    >>> from indexer import index_folder
    >>> report = index_folder(["~/Photos"], collection="default")
"""

from __future__ import annotations

from .diff import plan
from .importer import ImportReport, import_catalog
from .run import Progress, index_folder, remove_paths, run_files
from .scan import scan
from .writer import IndexReport

__all__ = ["index_folder", "import_catalog", "remove_paths", "IndexReport", "ImportReport", "Progress", "scan", "plan",
           "run_files"]
