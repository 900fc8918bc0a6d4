"""The vector index: faiss ``IndexIDMap2`` over an inner-product index, ids = SQL keys.

The index is derived data. It is built from the store's vectors, saved atomically
(temp file, fsync, ``os.replace``), and reconciled with the store on open. The factory
string is configuration: ``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``, ``"IVF4096,PQ32"``,
``"SQ8"``... (a leading ``IDMap2,`` is accepted and implied).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import ConfigError, VectorIndexError

__all__ = ["VectorIndex", "normalize_factory"]


def normalize_factory(factory: str) -> str:
    """The inner factory string: whitespace and a leading ``IDMap,``/``IDMap2,`` removed."""
    text = factory.replace(" ", "")
    for prefix in ("IDMap2,", "IDMap,"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if not text:
        raise ConfigError("empty index factory string")
    return text


def _make(factory: str, dim: int):
    import faiss

    try:
        inner = faiss.index_factory(dim, normalize_factory(factory), faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(f"invalid faiss index factory {factory!r}: {str(exc).strip().splitlines()[-1]}") from exc
    return faiss.IndexIDMap2(inner)


class VectorIndex:
    """A faiss index of L2-normalised float32 vectors keyed by int64 ids."""

    def __init__(self, index, factory: str, dim: int, note: str = "") -> None:
        self._index = index
        self.factory = normalize_factory(factory)
        self.dim = dim
        #: Why the index in use differs from the factory asked for (e.g. too few vectors to train).
        self.note = note

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(cls, factory: str, dim: int) -> "VectorIndex":
        """An empty index; it may need training before vectors can be added."""
        return cls(_make(factory, dim), factory, dim)

    @classmethod
    def build(cls, factory: str, dim: int, ids: np.ndarray, vectors: np.ndarray) -> "VectorIndex":
        """Build from all vectors, training first when the factory needs it.

        With too few vectors to train (say ``IVF4096`` over 500 images) the index falls back to
        exact ``Flat`` search and records why in :attr:`note`; a later rebuild trains it.
        """
        vi = cls.create(factory, dim)
        if not vi.is_trained:
            try:
                vi._index.train(_as_matrix(vectors, dim))
            except RuntimeError as exc:
                reason = str(exc).strip().splitlines()[-1]
                vi = cls(_make("Flat", dim), factory, dim, note=f"exact Flat search for now: {reason}")
        if len(ids):
            vi.add(ids, vectors)
        return vi

    # -- properties -----------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def inner_type(self) -> str:
        import faiss

        inner = faiss.downcast_index(self._index.index)
        name = type(inner).__name__
        if name == "IndexFlat" and inner.metric_type == faiss.METRIC_INNER_PRODUCT:
            return "IndexFlatIP"  # index_factory builds IndexFlat(IP); read_index gives IndexFlatIP
        return name

    @property
    def faiss_index(self):
        return self._index

    def ids(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    # -- mutation -------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not self.is_trained:
            raise VectorIndexError("the index must be trained before vectors are added; rebuild it")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        mat = _as_matrix(vectors, self.dim)
        if len(ids) != len(mat):
            raise VectorIndexError(f"{len(ids)} ids for {len(mat)} vectors")
        if len(ids):
            self._index.add_with_ids(mat, ids)

    def remove(self, ids: Iterable[int]) -> int:
        """Remove ids; returns how many were present."""
        import faiss

        arr = np.fromiter(ids, dtype=np.int64)
        if arr.size == 0:
            return 0
        try:
            return int(self._index.remove_ids(faiss.IDSelectorBatch(arr)))
        except RuntimeError as exc:
            raise VectorIndexError(
                f"index type {self.factory!r} cannot remove vectors ({str(exc).strip().splitlines()[-1]}); "
                "it is rebuilt from the store instead"
            ) from exc

    # -- query ----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, ids) per query row; missing slots are dropped by the caller (id -1).

        ``allowed``: search only among these ids (a faiss id selector inside the search, so a
        selective filter still gets its true top ``k``).
        """
        if k < 1:
            raise ValueError("k must be at least 1")
        mat = _as_matrix(queries, self.dim)
        if self.ntotal == 0 or (allowed is not None and len(allowed) == 0):
            n = len(mat)
            return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        if allowed is None:
            return self._index.search(mat, min(k, self.ntotal))
        selector = _selector(np.ascontiguousarray(allowed, dtype=np.int64))
        return self._index.search(mat, min(k, self.ntotal, len(allowed)), params=self._params(selector))

    def _params(self, selector):
        import faiss

        inner = faiss.downcast_index(self._index.index)
        if isinstance(inner, faiss.IndexIVF):
            return faiss.SearchParametersIVF(sel=selector, nprobe=inner.nprobe)
        if isinstance(inner, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(sel=selector, efSearch=inner.hnsw.efSearch)
        return faiss.SearchParameters(sel=selector)

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write atomically: a temp file in the same folder, fsync, ``os.replace``, fsync the folder."""
        import faiss

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            faiss.write_index(self._index, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except (RuntimeError, OSError) as exc:
            raise VectorIndexError(f"cannot save the vector index to {path}: {exc}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _fsync_dir(path.parent)

    @classmethod
    def load(cls, path: Path, factory: str, dim: int, note: str = "") -> "VectorIndex":
        import faiss

        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise VectorIndexError(f"cannot read the vector index {path}: {exc}") from exc
        if not isinstance(index, faiss.IndexIDMap2) or index.d != dim:
            raise VectorIndexError(f"{path} is not an id-mapped index of dimension {dim}")
        return cls(index, factory, dim, note=note)


def _selector(ids: np.ndarray):
    """An id selector that keeps its id array alive (faiss holds only a pointer)."""
    import faiss

    selector = faiss.IDSelectorBatch(ids)
    selector.ids_ref = ids
    return selector


def _as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    mat = np.ascontiguousarray(vectors, dtype=np.float32)
    if mat.ndim == 1:
        mat = mat.reshape(1, -1)
    if mat.ndim != 2 or (mat.shape[0] and mat.shape[1] != dim):
        raise VectorIndexError(f"expected vectors of shape (n, {dim}), got {mat.shape}")
    return mat.reshape(-1, dim)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not support fsync on directories
    finally:
        os.close(fd)
