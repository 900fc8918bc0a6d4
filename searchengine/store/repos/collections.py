"""Collections: their rows, index state and sequence numbers, the folders they come from
(roots), and the one-writer-per-collection lock on PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ...errors import CollectionNotFoundError, StoreError
from ..database import Database, Repository, insert_or, reason
from ..records import CollectionRecord, VectorKind, outermost
from ..schema import collections, roots

__all__ = ["CollectionsRepo", "WriterLocks"]


class CollectionsRepo(Repository):
    """The ``collections`` and ``roots`` tables."""

    def get_collection(self, name: str) -> CollectionRecord | None:
        with self.db.connect() as conn:
            row = conn.execute(select(collections).where(collections.c.name == name)).mappings().first()
        return CollectionRecord(**row) if row else None

    def require_collection(self, name: str) -> CollectionRecord:
        rec = self.get_collection(name)
        if rec is None:
            raise CollectionNotFoundError(
                f"collection {name!r} does not exist yet; create it with `searchengine index FOLDER`"
            )
        return rec

    def list_collections(self) -> list[str]:
        with self.db.connect() as conn:
            return list(conn.execute(select(collections.c.name).order_by(collections.c.name)).scalars())

    def create_collection(self, name: str, model_spec: str, dim: int, fingerprint: bytes,
                          fingerprint_id: str, index_factory: str) -> CollectionRecord:
        """The new collection, or the one another process created meanwhile with the same model."""
        with self.db.begin() as conn:
            conn.execute(insert_or(conn, collections, ["name"]).values(
                name=name, model_spec=model_spec, dim=dim, fingerprint=fingerprint,
                fingerprint_id=fingerprint_id, index_factory=index_factory, index_note="",
                next_seq=1, index_seq=0, text_index_seq=0, ocr=0, created_at=time.time(),
            ))
        rec = self.require_collection(name)
        if (rec.model_spec, rec.dim) != (model_spec, dim):
            raise StoreError(f"collection {name!r} was created meanwhile with the model {rec.model_spec}")
        return rec

    def set_index_state(self, collection_id: int, index_seq: int, note: str, kind: VectorKind = "images",
                        checksum: str | None = None) -> None:
        values = (dict(index_seq=index_seq, index_note=note, index_checksum=checksum) if kind == "images"
                  else dict(text_index_seq=index_seq, text_index_checksum=checksum))
        self._set(collection_id, **values)

    def set_ocr(self, collection_id: int, enabled: bool) -> None:
        self._set(collection_id, ocr=int(enabled))

    def set_index_factory(self, collection_id: int, factory: str) -> None:
        self._set(collection_id, index_factory=factory)

    def _set(self, collection_id: int, **values: object) -> None:
        with self.db.begin() as conn:
            conn.execute(update(collections).where(collections.c.id == collection_id).values(**values))

    def current_seq(self, collection_id: int) -> int:
        """The highest sequence number written so far (0 for none)."""
        with self.db.connect() as conn:
            return int(conn.execute(select(collections.c.next_seq).where(collections.c.id == collection_id)).scalar_one()) - 1

    # -- roots ------------------------------------------------------------------------------
    def add_roots(self, collection_id: int, paths: Iterable[str]) -> None:
        """Record folders (or single files) this collection's images come from; known ones are kept."""
        new = outermost(os.path.abspath(p) for p in paths)
        with self.db.begin() as conn:
            have = set(conn.execute(select(roots.c.path).where(roots.c.collection_id == collection_id)).scalars())
            todo = [p for p in new if p not in have and p in outermost(have | {p})]  # not inside a known root
            if todo:  # one added meanwhile by another process is kept
                now = time.time()
                conn.execute(insert_or(conn, roots, ["collection_id", "path"]),
                             [dict(collection_id=collection_id, path=p, added_at=now) for p in todo])

    def roots(self, collection_id: int) -> list[str]:
        with self.db.connect() as conn:
            return sorted(conn.execute(select(roots.c.path).where(roots.c.collection_id == collection_id)).scalars())


def _writer_key(collection: str) -> int:
    """The advisory lock key of a collection's writer: 64 bits of a hash of its name."""
    return int.from_bytes(hashlib.sha256(f"searchengine writer {collection}".encode()).digest()[:8], "big",
                          signed=True)


class WriterLocks:
    """One writer per collection, across machines: on PostgreSQL a session advisory lock held on a
    connection of its own. Other databases live in one data directory, whose lock file
    (:mod:`searchengine.locks`) is the lock."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._held: dict[str, Connection] = {}

    def lock(self, collection: str) -> bool:
        """Take the collection's lock until :meth:`unlock` (the server drops it if the process dies).
        False when another session holds it; True without PostgreSQL."""
        if self._db.dialect.name != "postgresql" or collection in self._held:
            return True
        conn = self._db.raw_connect()
        try:
            got = bool(conn.execute(select(func.pg_try_advisory_lock(_writer_key(collection)))).scalar())
            conn.commit()  # the session lock outlives the transaction; the connection is not left in one
        except SQLAlchemyError as exc:
            conn.close()
            raise StoreError(f"database error: {reason(exc)}") from exc
        if not got:
            conn.close()
            return False
        self._held[collection] = conn
        return True

    def unlock(self, collection: str) -> None:
        conn = self._held.pop(collection, None)
        if conn is None:
            return
        try:
            conn.execute(select(func.pg_advisory_unlock(_writer_key(collection))))
            conn.commit()
        except SQLAlchemyError:
            pass  # the connection is gone, and its session lock with it
        finally:
            conn.close()

    def unlock_all(self) -> None:
        for name in list(self._held):
            self.unlock(name)
