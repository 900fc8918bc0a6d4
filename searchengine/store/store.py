"""The :class:`Store`: one database handle shared by the repositories it is composed of."""

from __future__ import annotations

from .database import open_database
from .migrations import current_version, migrate
from .repos import CatalogRepo, CollectionsRepo, ImagesRepo, SearchRepo, TextsRepo, VectorsRepo, WriterLocks

__all__ = ["Store"]


class Store(CollectionsRepo, ImagesRepo, VectorsRepo, CatalogRepo, TextsRepo, SearchRepo):
    """The SQL metadata store: collections, images (with vectors), catalogs, texts, tags and
    per-file errors. Opening it migrates the schema to the latest version."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.db = open_database(url)
        self._writers = WriterLocks(self.db)
        migrate(self.db)

    def close(self) -> None:
        self._writers.unlock_all()
        self.db.dispose()

    def schema_version(self) -> int:
        with self.db.connect() as conn:
            return current_version(conn)

    # -- one writer per collection, across machines -------------------------------------------
    def lock_writer(self, collection: str) -> bool:
        """On PostgreSQL, take the collection's writer lock in the database: a session advisory lock
        on a connection held until :meth:`unlock_writer` (the server drops it if the process dies).
        False when another session holds it. Other databases live in one data directory, whose
        lock file (:mod:`searchengine.locks`) is the lock: True."""
        return self._writers.lock(collection)

    def unlock_writer(self, collection: str) -> None:
        self._writers.unlock(collection)
