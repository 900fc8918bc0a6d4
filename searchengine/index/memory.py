"""The in-memory vector index: a faiss index (built from a factory string, see
:mod:`searchengine.index.factory`) whose ids are the SQL keys, saved to one file atomically.

The index is derived data. It is built from the store's vectors, saved atomically (temp file,
fsync, ``os.replace``) with a checksum that the load checks before faiss parses the file, and
reconciled with the store on open. ``auto`` chooses by collection size
(:func:`~searchengine.index.factory.choose_factory`): exact ``Flat`` search below a threshold, above it
an inverted file trained on a sample of the stored vectors, with ``nprobe`` calibrated
(:mod:`searchengine.index.calibrate`). The choice and its measured recall are the index's ``note``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import VectorIndexError
from .base import (
    FALLBACK_NOTE,
    BaseIndex,
    as_matrix,
    faiss_reason,
    index_ids,
    inner_index,
    selector,
    verify_checksum,
    write_index,
)
from .calibrate import CALIBRATION_QUERIES, calibration_rows, exact_top, tune_nprobe
from .factory import (
    AUTO,
    AUTO_TARGET_RECALL,
    auto_exact_note,
    choose_factory,
    is_ondisk,
    ivf_lists,
    make_index,
    normalize_factory,
)

__all__ = ["VectorIndex"]


class VectorIndex(BaseIndex):
    """A faiss index of L2-normalised float32 vectors keyed by int64 ids, held in memory."""

    def __init__(self, index: Any, factory: str, dim: int, note: str = "", chosen: str | None = None) -> None:
        factory = normalize_factory(factory)
        super().__init__(index, factory, dim, note, chosen or _describe(index, factory))

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(cls, factory: str, dim: int) -> "VectorIndex":
        """An empty index; it may need training before vectors can be added."""
        return cls(make_index(factory, dim), factory, dim)

    @classmethod
    def build(cls, factory: str, dim: int, ids: np.ndarray, vectors: np.ndarray) -> "VectorIndex":
        """Build from all vectors, training first when the factory needs it.

        With too few vectors to train (say ``IVF4096`` over 500 images) the index falls back to
        exact ``Flat`` search and records why in :attr:`note`; a later rebuild trains it.
        ``auto`` chooses the factory by size (:func:`choose_factory`) and tunes ``nprobe``.
        """
        factory = normalize_factory(factory)
        if is_ondisk(factory):
            raise VectorIndexError(f"{factory!r} is built on disk from the store (searchengine.ondisk), not in memory")
        concrete = choose_factory(len(ids)) if factory == AUTO else factory
        vi = cls(make_index(concrete, dim), factory, dim, chosen=concrete)
        if not vi.is_trained:
            try:
                mat = as_matrix(vectors, dim)
                vi._index.train(_training_sample(mat, concrete) if factory == AUTO else mat)
            except RuntimeError as exc:
                vi = cls(make_index("Flat", dim), factory, dim, note=f"{FALLBACK_NOTE}: {faiss_reason(exc)}",
                         chosen="Flat")
        if len(ids):
            vi.add(ids, vectors)
        if factory == AUTO and not vi.untrained_fallback:
            if vi.chosen == "Flat":
                vi.note = auto_exact_note()
            else:
                nprobe, recall = vi.tune_nprobe(np.asarray(ids), vectors)
                vi.note = (f"auto: {vi.chosen} trained at {len(ids):,} vectors, nprobe {nprobe}: recall@10 "
                           f"{recall:.3f} of exact on {min(len(ids), CALIBRATION_QUERIES)} stored vectors")
        return vi

    def tune_nprobe(self, ids: np.ndarray, vectors: np.ndarray, target: float = AUTO_TARGET_RECALL,
                    queries: int = CALIBRATION_QUERIES, seed: int = 0) -> tuple[int, float]:
        """Calibrate the inverted file's ``nprobe`` (:func:`searchengine.index.calibrate.tune_nprobe`)
        with ``queries`` of the stored ``vectors`` (keyed by ``ids``) as queries; returns (nprobe, recall)."""
        import faiss

        ivf = faiss.extract_index_ivf(self._index)  # raises unless the index is an inverted file
        mat = as_matrix(vectors, self.dim)
        if len(mat) < 2:
            return int(ivf.nprobe), 1.0  # no other vector to find
        rows = calibration_rows(len(mat), seed, queries)
        truth = exact_top(mat[rows], ids, mat, min(11, len(mat)))
        return tune_nprobe(self._index, mat[rows], np.asarray(ids)[rows], truth, target=target)

    # -- what it holds --------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def storage(self) -> str:
        """Where the vectors live (an on-disk index says which file, see :mod:`searchengine.index.ondisk`)."""
        return "in memory"

    def ids(self) -> np.ndarray:
        return index_ids(self._index)

    # -- mutation -------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not self.is_trained:
            raise VectorIndexError("the index must be trained before vectors are added; rebuild it")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        mat = as_matrix(vectors, self.dim)
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
                f"index type {self.factory!r} cannot remove vectors ({faiss_reason(exc)}); "
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
        mat = as_matrix(queries, self.dim)
        if self.ntotal == 0 or (allowed is not None and len(allowed) == 0):
            n = len(mat)
            return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        if allowed is None:
            return self._index.search(mat, min(k, self.ntotal))
        sel = selector(np.ascontiguousarray(allowed, dtype=np.int64))
        return self._index.search(mat, min(k, self.ntotal, len(allowed)), params=self._params(sel))

    def _params(self, sel: Any) -> Any:
        import faiss

        inner = inner_index(self._index)
        if isinstance(inner, faiss.IndexIVF):
            return faiss.SearchParametersIVF(sel=sel, nprobe=inner.nprobe)
        if isinstance(inner, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(sel=sel, efSearch=inner.hnsw.efSearch)
        return faiss.SearchParameters(sel=sel)

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: Path) -> str:
        """Write atomically (see :func:`~searchengine.index.base.write_index`); returns the file's SHA-256,
        for :meth:`load` to check."""
        return write_index(self._index, path)

    @classmethod
    def load(cls, path: Path, factory: str, dim: int, note: str = "", checksum: str | None = None) -> "VectorIndex":
        """Read an index file; with ``checksum`` (what :meth:`save` returned), only if the file still
        has it: faiss's reader is native code, so a file the engine did not write is never parsed."""
        import faiss

        if checksum is not None:
            verify_checksum(Path(path), checksum)
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise VectorIndexError(f"cannot read the vector index {path}: {exc}") from exc
        own_ids = isinstance(index, faiss.IndexIVF)  # read_index returns the concrete type
        if not (own_ids or isinstance(index, faiss.IndexIDMap2)) or index.d != dim:
            raise VectorIndexError(f"{path} is not an id-mapped index of dimension {dim}")
        if not own_ids and isinstance(inner_index(index), faiss.IndexIVF):  # the layout that cannot remove
            raise VectorIndexError(f"{path} is an inverted file in an id map, which cannot remove vectors")
        return cls(index, factory, dim, note=note)


def _training_sample(mat: np.ndarray, factory: str, per_list: int = 64, seed: int = 0) -> np.ndarray:
    """At most ``per_list`` points per inverted list (faiss wants >= 39): k-means cost stays bounded."""
    nlist = ivf_lists(factory)
    if nlist is None or len(mat) <= nlist * per_list:
        return mat
    rows = np.sort(np.random.default_rng(seed).choice(len(mat), size=nlist * per_list, replace=False))
    return mat[rows]


def _describe(index: Any, factory: str) -> str:
    """The concrete factory of a loaded index (``auto`` saved it as Flat or IVF{n},SQfp16)."""
    if factory != AUTO:
        return factory
    import faiss

    inner = inner_index(index)
    if isinstance(inner, faiss.IndexIVF):
        return f"IVF{inner.nlist},SQfp16"
    return "Flat"
