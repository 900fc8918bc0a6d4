"""Vectors: reading the stored vectors of images (image index) and texts (text index) back,
by id, by sequence number or all of them, for the vector indexes derived from them."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from sqlalchemy import func, select

from ..codec import unpack_vectors
from ..database import Repository, chunks, ids_in
from ..records import VectorKind
from ..rows import collection_dim
from ..schema import VECTOR_TABLES

__all__ = ["VectorsRepo"]


class VectorsRepo(Repository):
    """The ``vector`` and ``seq`` columns of the ``images`` and ``texts`` tables."""

    def vectors_for(self, collection_id: int, ids: Sequence[int], kind: VectorKind = "images") -> np.ndarray:
        """The stored vectors of ``ids``, in that order (KeyError if one is not stored: see :meth:`live_vectors`)."""
        blobs = self._vector_blobs(collection_id, ids, kind)
        return unpack_vectors([blobs[int(i)] for i in ids], self._dim(collection_id))

    def live_vectors(self, collection_id: int, ids: Sequence[int],
                     kind: VectorKind = "images") -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of those of ``ids`` still stored, in the given order: for readers, whose
        ids may have been removed by a writer since they were read."""
        blobs = self._vector_blobs(collection_id, ids, kind)
        found = [int(i) for i in ids if int(i) in blobs]
        return np.asarray(found, dtype=np.int64), unpack_vectors([blobs[i] for i in found], self._dim(collection_id))

    def _vector_blobs(self, collection_id: int, ids: Sequence[int], kind: VectorKind) -> dict[int, bytes]:
        table = VECTOR_TABLES[kind]
        blobs: dict[int, bytes] = {}
        with self.db.connect() as conn:
            for chunk in chunks([int(i) for i in ids], 900):
                for i, v in conn.execute(select(table.c.id, table.c.vector).where(
                        ids_in(table, collection_id, chunk))):
                    blobs[int(i)] = v
        return blobs

    def iter_vectors(self, collection_id: int, min_seq: int = 0, chunk: int = 8192,
                     kind: VectorKind = "images") -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in chunks, for rows with ``seq > min_seq``, in id order."""
        table = VECTOR_TABLES[kind]
        dim = self._dim(collection_id)
        last = 0
        while True:
            with self.db.connect() as conn:
                rows = conn.execute(select(table.c.id, table.c.vector).where(
                    table.c.collection_id == collection_id, table.c.seq > min_seq, table.c.id > last,
                ).order_by(table.c.id).limit(chunk)).all()
            if not rows:
                return
            last = int(rows[-1][0])
            yield np.array([r[0] for r in rows], dtype=np.int64), unpack_vectors([r[1] for r in rows], dim)

    def all_vectors(self, collection_id: int, kind: VectorKind = "images") -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every row, in id order."""
        parts = list(self.iter_vectors(collection_id, kind=kind))
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, self._dim(collection_id)), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def ids_newer_than(self, collection_id: int, seq: int, kind: VectorKind = "images") -> np.ndarray:
        """Ids of rows written after sequence number ``seq``."""
        table = VECTOR_TABLES[kind]
        with self.db.connect() as conn:
            return np.fromiter(conn.execute(select(table.c.id).where(
                table.c.collection_id == collection_id, table.c.seq > seq)).scalars(), dtype=np.int64)

    def count_live(self, collection_id: int, kind: VectorKind = "images") -> int:
        """How many rows of ``kind`` the collection has (each one vector in its index)."""
        table = VECTOR_TABLES[kind]
        with self.db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)
                                    .where(table.c.collection_id == collection_id)).scalar_one())

    def live_ids(self, collection_id: int, kind: VectorKind = "images") -> np.ndarray:
        table = VECTOR_TABLES[kind]
        with self.db.connect() as conn:
            return np.fromiter(conn.execute(select(table.c.id).where(table.c.collection_id == collection_id)).scalars(),
                               dtype=np.int64)

    def _dim(self, collection_id: int) -> int:
        with self.db.connect() as conn:
            return collection_dim(conn, collection_id)
