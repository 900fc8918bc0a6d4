"""The one interface of a vector index (:class:`BaseIndex`: what the in-memory and the on-disk
index both offer) and the helpers they share: the faiss index inside, the ids it holds, id
selectors, the vector matrix contract, checked reads and atomic saves of index files.

Vectors are float32 (n, d), L2-normalised and compared by inner product; ids are the SQL keys (int64).
"""

from __future__ import annotations

import contextlib
import os
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .._fs import Sink, file_checksum, write_atomic
from ..errors import IndexChecksumError, VectorIndexError

__all__ = ["BaseIndex", "FALLBACK_NOTE", "RERANK_FACTOR", "is_lossy", "inner_index", "index_ids", "selector",
           "as_matrix", "faiss_reason", "verify_checksum", "save_atomic", "write_index", "native_stdout_to_stderr"]

#: A lossy index (product-quantised codes, :func:`is_lossy`) is asked for this many times the
#: candidates wanted, which the engine re-ranks by exact inner products with the vectors the store
#: keeps (float16); Flat and SQ indexes are searched as they are. Calibration measures recall the
#: same way: the true top 10 among the candidates the re-rank would see.
RERANK_FACTOR = 10
#: how the note of an index that could not be trained yet begins (it searches exactly until a rebuild)
FALLBACK_NOTE = "exact Flat search for now"


class BaseIndex(ABC):
    """A faiss index of L2-normalised float32 vectors keyed by int64 ids (the SQL keys).

    ``factory`` is the factory string asked for, ``chosen`` the concrete one in use (``auto``
    resolved) and ``note`` why they differ, or what ``auto`` chose and the recall it measured."""

    def __init__(self, index: Any, factory: str, dim: int, note: str, chosen: str) -> None:
        self._index = index
        self.factory = factory
        self.dim = dim
        self.note = note
        self.chosen = chosen

    # -- what it holds ----------------------------------------------------------------------
    @property
    @abstractmethod
    def ntotal(self) -> int:
        """How many vectors a search sees."""

    @property
    @abstractmethod
    def storage(self) -> str:
        """Where the vectors live, in words (shown by ``status``)."""

    @abstractmethod
    def ids(self) -> np.ndarray:
        """The ids a search can return (int64)."""

    # -- mutation ---------------------------------------------------------------------------
    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under their ids."""

    @abstractmethod
    def remove(self, ids: Iterable[int]) -> int:
        """Remove ids; returns how many were present."""

    # -- query and persistence --------------------------------------------------------------
    @abstractmethod
    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, ids) per query row (id -1 in missing slots); ``allowed``: search only
        among these ids (a selector inside the search, so a selective filter still gets its top ``k``)."""

    @abstractmethod
    def save(self, path: Path) -> str:
        """Write the index's files atomically; returns what the store records to check them on load."""

    # -- shared properties ------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def inner_type(self) -> str:
        """The faiss class that does the searching (``IndexFlatIP``, ``IndexIVFPQ``, ...)."""
        import faiss

        inner = inner_index(self._index)
        name = type(inner).__name__
        if name == "IndexFlat" and inner.metric_type == faiss.METRIC_INNER_PRODUCT:
            return "IndexFlatIP"  # index_factory builds IndexFlat(IP); read_index gives IndexFlatIP
        return name

    @property
    def lossy(self) -> bool:
        """Whether the index keeps product-quantised codes (see :func:`is_lossy`)."""
        return is_lossy(self._index)

    @property
    def faiss_index(self) -> Any:
        return self._index

    @property
    def nprobe(self) -> int | None:
        """An inverted file's lists searched per query; None for other types."""
        import faiss

        inner = inner_index(self._index)
        return int(inner.nprobe) if isinstance(inner, faiss.IndexIVF) else None

    @property
    def untrained_fallback(self) -> bool:
        """Searching exactly because the factory's training failed (too few vectors); a rebuild trains it."""
        return self.note.startswith(FALLBACK_NOTE)


def inner_index(index: Any) -> Any:
    """The index that does the searching: inside an ``IndexIDMap2``, or the inverted file itself."""
    import faiss

    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index


def is_lossy(index: Any) -> bool:
    """Whether a faiss index keeps product-quantised codes (PQ of any kind, OPQ included), whose
    scores are approximations that a search should re-rank exactly. Flat and SQ codes are not."""
    import faiss

    inner = inner_index(faiss.downcast_index(index))
    while isinstance(inner, faiss.IndexPreTransform):  # OPQ and other rotations before the codes
        inner = faiss.downcast_index(inner.index)
    return isinstance(inner, (faiss.IndexPQ, faiss.IndexIVFPQ, faiss.IndexPQFastScan,
                              faiss.IndexIVFPQFastScan, faiss.IndexHNSWPQ))


def index_ids(index: Any) -> np.ndarray:
    """The ids a faiss index holds: an ``IndexIDMap2``'s map, or the ids in an inverted file's lists (sorted)."""
    import faiss

    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    lists = index.invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(lists.nlist) if lists.list_size(i)]
    return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def selector(ids: np.ndarray) -> Any:
    """An id selector that keeps its id array alive (faiss holds only a pointer)."""
    import faiss

    sel = faiss.IDSelectorBatch(ids)
    sel.ids_ref = ids
    return sel


def as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    """``vectors`` as a contiguous float32 (n, dim) matrix (one row for a 1-d vector)."""
    mat = np.ascontiguousarray(vectors, dtype=np.float32)
    if mat.ndim == 1:
        mat = mat.reshape(1, -1)
    if mat.ndim != 2 or (mat.shape[0] and mat.shape[1] != dim):
        raise VectorIndexError(f"expected vectors of shape (n, {dim}), got {mat.shape}")
    return mat.reshape(-1, dim)


def faiss_reason(exc: BaseException) -> str:
    """The last line of a faiss error (its message ends with the reason)."""
    return str(exc).strip().splitlines()[-1]


def verify_checksum(path: Path, want: str) -> None:
    """Raise unless ``path`` has the SHA-256 ``want`` recorded when the engine wrote it (before any
    native reader sees the file)."""
    try:
        found = file_checksum(path)
    except OSError as exc:
        raise VectorIndexError(f"cannot read the vector index file {path}: {exc}") from exc
    if found != want:
        raise IndexChecksumError(f"{path} does not have the checksum recorded when the engine saved it "
                                 "(a save cut short by a crash, or a file changed outside the engine); "
                                 "it is not read")


def save_atomic(path: Path, produce: Callable[[Sink], None]) -> str:
    """Write an index file atomically (:func:`searchengine._fs.write_atomic`, temp files of killed
    saves removed first); returns its SHA-256. On any error the previous file stays as it was and
    :class:`VectorIndexError` says so."""
    try:
        return write_atomic(path, produce, clean=True)
    except (RuntimeError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else faiss_reason(exc)
        raise VectorIndexError(f"cannot save the vector index to {path}: {reason}; "
                               "the previous index file is unchanged") from exc


def write_index(index: Any, path: Path) -> str:
    """Write a faiss index atomically (see :func:`save_atomic`); returns the file's SHA-256, for
    the load to check.

    The bytes go through Python's own file object: faiss's file writer reports a failed final
    flush (a full disk, a file size limit) only on stderr when it closes the file, so a
    truncated index would have been put in place with the checksum of its truncated bytes."""
    import faiss

    return save_atomic(path, lambda sink: faiss.write_index(index, faiss.PyCallbackIOWriter(sink)))


@contextlib.contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """faiss's native code prints progress on stdout, which would corrupt ``--json`` output."""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
