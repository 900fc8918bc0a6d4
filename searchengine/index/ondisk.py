"""Inverted files served from disk, memory-mapped and read-only, for collections too large to hold
in memory (built by :mod:`searchengine.index.ondisk_build` from an ``ondisk:`` factory string).

Resident memory is the quantizer and codebooks plus the pages of the lists that queries touch.
The lists on disk are never modified: vectors added after the build go to a small in-memory exact
index (the *delta*, saved next to it as ``<index>.delta``) searched alongside, and removed or
re-encoded rows are hidden from the lists by an id selector inside the search (their ids saved as
``<index>.hidden``). Build again (``build-index``/``rebuild-index``) when the delta grows large.

The store records one string for the files (:class:`OnDiskRecord`): the SHA-256 of the index file,
the name and SHA-256 of its ``.ivfdata``, the SHA-256 of the delta and of the hidden ids. Every file
is checked before faiss reads it; the ``.ivfdata`` once per file version (:func:`verify_data_file`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .._fs import remove_stale, write_bytes_atomic
from ..errors import IndexChecksumError, VectorIndexError
from .base import (
    BaseIndex,
    as_matrix,
    faiss_reason,
    index_ids,
    native_stdout_to_stderr,
    save_atomic,
    selector,
    verify_checksum,
)
from .factory import ONDISK_PREFIX, base_factory, normalize_factory
from .memory import VectorIndex

__all__ = ["OnDiskIndex", "OnDiskRecord", "VERIFIED_SUFFIX", "verify_data_file", "read_base", "remove_unused_files"]

#: the suffix of the note that remembers a lists file's passed check (see :func:`verify_data_file`)
VERIFIED_SUFFIX = ".verified"


@dataclass(frozen=True)
class OnDiskRecord:
    """What the store records for an on-disk index, as one string in its checksum column."""

    index: str  # SHA-256 of the index file
    data_name: str  # the .ivfdata file, in the index file's folder
    data: str  # its SHA-256
    delta: str  # SHA-256 of the delta file
    hidden: str = ""  # SHA-256 of the hidden-ids file ("": none saved, as in records written before they were)

    def __str__(self) -> str:
        text = f"{ONDISK_PREFIX}{self.index}:{self.data_name}:{self.data}:{self.delta}"
        return text + f":{self.hidden}" if self.hidden else text

    @classmethod
    def parse(cls, text: str | None) -> "OnDiskRecord | None":
        if not text or not text.startswith(ONDISK_PREFIX):
            return None
        parts = text[len(ONDISK_PREFIX):].split(":")
        if len(parts) not in (4, 5) or "/" in parts[1] or not parts[1].endswith(".ivfdata"):
            raise IndexChecksumError(f"malformed on-disk index record {text!r}")
        return cls(*parts)

    def same_lists(self, other: "OnDiskRecord") -> bool:
        """Whether both records name the same index file and lists (their deltas may differ)."""
        return (self.index, self.data_name, self.data) == (other.index, other.data_name, other.data)


def _delta_path(path: Path) -> Path:
    return path.with_name(path.name + ".delta")


def _hidden_path(path: Path) -> Path:
    """The ids of the lists' vectors that no longer count (removed, or replaced in the delta)."""
    return path.with_name(path.name + ".hidden")


class OnDiskIndex(BaseIndex):
    """A memory-mapped inverted file (read-only) plus an in-memory delta of later changes."""

    def __init__(self, base: Any, factory: str, dim: int, path: Path, record: OnDiskRecord, delta: VectorIndex,
                 note: str = "", hidden: np.ndarray | None = None, base_ids: np.ndarray | None = None) -> None:
        super().__init__(base, normalize_factory(factory), dim, note, base_factory(factory))
        self.path = Path(path)
        self.record = record
        self._delta = delta
        self._base_ids = base_ids  # the lists' ids, when already read (sorted)
        if hidden is None:  # none saved (a new build, or a record from before they were): the delta's
            hidden = np.intersect1d(self.base_ids(), delta.ids()) if delta.ntotal else np.zeros(0, np.int64)
        self._hidden = hidden

    # -- what it holds ----------------------------------------------------------------------
    def base_ids(self) -> np.ndarray:
        """The ids in the lists on disk, sorted (read once)."""
        if self._base_ids is None:
            self._base_ids = index_ids(self._index)
        return self._base_ids

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal) - int(self._hidden.size) + self._delta.ntotal

    @property
    def delta_size(self) -> int:
        return self._delta.ntotal

    @property
    def hidden(self) -> int:
        return int(self._hidden.size)

    @property
    def data_path(self) -> Path:
        return self.path.parent / self.record.data_name

    @property
    def storage(self) -> str:
        import faiss

        codes = int(self._index.code_size)
        size = self.data_path.stat().st_size if self.data_path.exists() else 0
        return (f"on disk, memory-mapped: {self._index.nlist:,} lists, {codes} bytes a code (+8 for the id), "
                f"{self._index.ntotal:,} vectors in {self.record.data_name} ({size / 1e6:,.1f} MB); "
                f"{self._delta.ntotal:,} added since the build (in memory), {self._hidden.size:,} hidden"
                + ("" if isinstance(faiss.downcast_InvertedLists(self._index.invlists), faiss.OnDiskInvertedLists)
                   else " (lists in memory)"))

    def ids(self) -> np.ndarray:
        return np.union1d(np.setdiff1d(self.base_ids(), self._hidden, assume_unique=True), self._delta.ids())

    # -- mutation: the delta only -----------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._delta.add(ids, vectors)
        self._hide(ids)  # a re-added id's old vector in the lists no longer counts

    def remove(self, ids: Iterable[int]) -> int:
        arr = np.unique(np.fromiter(ids, dtype=np.int64))
        if arr.size == 0:
            return 0
        from_delta = self._delta.remove(arr.tolist())
        return from_delta + self._hide(arr)

    def _hide(self, ids: np.ndarray) -> int:
        new = np.setdiff1d(np.intersect1d(self.base_ids(), ids), self._hidden, assume_unique=True)
        self._hidden = np.union1d(self._hidden, new)
        return int(new.size)

    # -- query ------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if k < 1:
            raise ValueError("k must be at least 1")
        mat = as_matrix(queries, self.dim)
        parts = []
        if self._delta.ntotal:
            parts.append(self._delta.search(mat, k, allowed))
        parts += self._search_lists(mat, k, allowed)
        if not parts:
            return np.zeros((len(mat), 0), np.float32), np.zeros((len(mat), 0), np.int64)
        scores = np.concatenate([p[0] for p in parts], axis=1)
        found = np.concatenate([p[1] for p in parts], axis=1)
        scores = np.where(found < 0, -np.inf, scores)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1).astype(np.float32), np.take_along_axis(found, order, 1)

    def _search_lists(self, mat: np.ndarray, k: int, allowed: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The lists' top ``k`` among ``allowed`` (or all), the hidden ids left out by a selector."""
        import faiss

        base = self._index
        sel = None
        if allowed is not None:
            sel = selector(np.setdiff1d(np.asarray(allowed, np.int64), self._hidden))
            usable = int(sel.ids_ref.size)
        else:
            usable = int(base.ntotal - self._hidden.size)
            if self._hidden.size:
                inner = selector(self._hidden)
                sel = faiss.IDSelectorNot(inner)
                sel.inner_ref = inner
        if usable <= 0:
            return []
        params = faiss.SearchParametersIVF(sel=sel, nprobe=base.nprobe) if sel is not None else None
        return [base.search(mat, min(k, usable), params=params)]

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: Path) -> str:
        """Write the delta and the hidden ids (the lists on disk never change); returns the record to
        keep in the store. Keeping the hidden ids lets an open count the index without reading the
        lists' ids (100M of them at that scale)."""
        if Path(path) != self.path:
            raise VectorIndexError(f"an on-disk index lives at {self.path}; it cannot be saved to {path}")
        ids = np.ascontiguousarray(self._hidden, dtype="<i8")
        hidden = save_atomic(_hidden_path(self.path), lambda sink: sink(ids.tobytes()))
        delta = self._delta.save(_delta_path(self.path))
        self.record = OnDiskRecord(self.record.index, self.record.data_name, self.record.data, delta, hidden)
        return str(self.record)

    @classmethod
    def load(cls, path: Path, factory: str, dim: int, note: str = "", checksum: str | None = None,
             reuse: BaseIndex | None = None) -> "OnDiskIndex":
        """Open after checking its files (index, lists, delta, hidden ids) against ``checksum`` (an :class:`OnDiskRecord`).

        ``reuse``: an on-disk index already open with the same lists (a reader picking up a new
        delta); its mapping is shared instead of hashing and mapping the data file again."""
        path = Path(path)
        record = OnDiskRecord.parse(checksum)
        if record is None:
            raise IndexChecksumError(f"no on-disk index record for {path}")
        delta = VectorIndex.load(_delta_path(path), "Flat", dim, checksum=record.delta)
        hidden = None
        if record.hidden:
            verify_checksum(_hidden_path(path), record.hidden)
            hidden = np.fromfile(_hidden_path(path), dtype="<i8").astype(np.int64)
        if isinstance(reuse, OnDiskIndex) and reuse.path == path and reuse.record.same_lists(record):
            return cls(reuse._index, factory, dim, path, record, delta, note, hidden, reuse._base_ids)
        verify_checksum(path, record.index)  # small, and what faiss parses: every time
        verify_data_file(path.parent / record.data_name, record.data)
        return cls(read_base(path, dim), factory, dim, path, record, delta, note, hidden)


def _file_signature(file: Path, want: str) -> str:
    st = os.stat(file)
    return f"{want}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_dev}:{st.st_ino}"


def verify_data_file(file: Path, want: str) -> None:
    """Check the lists file against its recorded SHA-256, reading it whole once per file version.

    At 100M vectors the lists are gigabytes (7.2 GB with PQ64: about 13 s to hash here), so a
    check that passed is remembered in ``<file>.verified``: the checksum with the file's size,
    mtime, ctime (which utime cannot set), device and inode. While all of them are unchanged
    the file is not read again; any change, or no note (a read-only folder), hashes it again.
    The lists are only ever mapped and read as codes and ids, never parsed (the index file is,
    and it is hashed on every open)."""
    note = file.with_name(file.name + VERIFIED_SUFFIX)
    signature = None
    try:
        signature = _file_signature(file, want)
        if note.read_text() == signature:
            return
    except OSError:
        pass
    verify_checksum(file, want)
    try:
        if signature is None or _file_signature(file, want) != signature:
            return  # changed while it was hashed: nothing to remember
        write_bytes_atomic(note, signature.encode(), durable=False)
    except OSError:  # a folder the reader may not write: it hashes on each open
        pass


def read_base(path: Path, dim: int) -> Any:
    """The index file, its lists mapped read-only from the ``.ivfdata`` in the same folder."""
    import faiss

    try:
        with native_stdout_to_stderr():  # faiss says so on stdout when the folder was moved
            base = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as exc:
        raise VectorIndexError(f"cannot read the on-disk index {path}: {faiss_reason(exc)}") from exc
    if not isinstance(base, faiss.IndexIVF) or base.d != dim or not isinstance(
            faiss.downcast_InvertedLists(base.invlists), faiss.OnDiskInvertedLists):
        raise VectorIndexError(f"{path} is not an on-disk inverted file of dimension {dim}")
    return base


def remove_unused_files(path: Path, keep: BaseIndex | None) -> int:
    """Remove ``.ivfdata`` files of ``path`` other than the one ``keep`` uses (earlier builds, builds cut
    short), and the delta when ``keep`` is not on disk. A process that still maps a removed file
    keeps reading it (the file goes when its last mapping does)."""
    keep_name = keep.record.data_name if isinstance(keep, OnDiskIndex) else None
    removed = 0
    stale = [p for p in path.parent.glob(f"{path.name}.*.ivfdata") if p.name != keep_name]
    if keep_name is None:
        stale += [_delta_path(path), _hidden_path(path)]
    for old in stale:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
            removed += 1
    for note in path.parent.glob(f"{path.name}.*.ivfdata{VERIFIED_SUFFIX}"):  # notes of lists gone
        if not note.with_name(note.name[: -len(VERIFIED_SUFFIX)]).exists():
            with contextlib.suppress(FileNotFoundError):
                note.unlink()
    remove_stale(path.parent.glob(f".{path.name}.*.ivfdata{VERIFIED_SUFFIX}.*.tmp"))  # a note's writer killed
    return removed
