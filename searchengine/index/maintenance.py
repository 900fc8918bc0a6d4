"""The one owner of store<->index consistency: a collection's image and text indexes are loaded
(checksum-verified), reconciled with the live rows, updated by writers, saved and rebuilt here.

The SQL store is the truth; each index is derived data. Every writer (the indexer, the catalog
importer, removals) applies its changes through :class:`Indexes` after committing them to the
store; an index type that cannot take a change (HNSW cannot remove) is marked stale and rebuilt
from the store when the writer commits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import IndexChecksumError, VectorIndexError
from ..store import CollectionRecord, Store, VectorKind
from . import (
    FALLBACK_NOTE,
    ONDISK_PREFIX,
    BaseIndex,
    BuildOptions,
    BuildStats,
    OnDiskIndex,
    TooFewVectorsError,
    VectorIndex,
    base_factory,
    build_from_store,
    is_ondisk,
    needs_rechoice,
    normalize_factory,
    remove_unused_files,
)

__all__ = ["Indexes", "INDEX_FILE", "TEXT_INDEX_FILE", "KINDS"]

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
TEXT_INDEX_FILE = "texts.faiss"
KINDS: tuple[VectorKind, ...] = ("images", "texts")
_FILES: dict[str, str] = {"images": INDEX_FILE, "texts": TEXT_INDEX_FILE}
_RECONCILE_CHUNK = 8192


@dataclass(frozen=True)
class _Saved:
    """What the collection's row records of one index: the sequence number it is complete to, its
    file's checksum and (images only) its note."""

    seq: int
    checksum: str | None
    note: str

    @classmethod
    def of(cls, rec: CollectionRecord, kind: VectorKind) -> "_Saved":
        if kind == "images":
            return cls(rec.index_seq, rec.index_checksum, rec.index_note)
        return cls(rec.text_index_seq, rec.text_index_checksum, "")


class Indexes:
    """The image index (loaded on open) and the text index (captions and titles, loaded on first
    use) of one collection, kept consistent with its store rows."""

    def __init__(self, store: Store, collection: CollectionRecord, folder: Path, *, writable: bool) -> None:
        self.store = store
        self.collection = collection
        self.folder = folder
        self.writable = writable
        self.options = BuildOptions()
        #: the figures of the last on-disk build of the image index
        self.last_build: BuildStats | None = None
        #: a change the image index could not take since the last commit: rebuilt from the store then
        self.stale = False
        self._texts: BaseIndex | None = None
        self.images: BaseIndex = self.load("images")

    # -- paths and the collection's record --------------------------------------------------
    def path(self, kind: VectorKind = "images") -> Path:
        return self.folder / _FILES[kind]

    def refresh_record(self) -> CollectionRecord:
        """Read the collection's row again (after a save, or another process's write)."""
        self.collection = self.store.require_collection(self.collection.name)
        return self.collection

    @property
    def texts(self) -> BaseIndex:
        if self._texts is None:
            self._texts = self.load("texts")
        return self._texts

    def reload(self, rec: CollectionRecord) -> BaseIndex:
        """Take a new generation another writer saved: the image index is loaded again, the text
        index on its next use."""
        self.collection = rec
        self.images, self._texts = self.load("images"), None
        return self.images

    # -- loading ----------------------------------------------------------------------------
    def load(self, kind: VectorKind) -> BaseIndex:
        """The saved index of ``kind``, verified and reconciled with the store; rebuilt from the
        store when its file is missing or damaged."""
        rec = self.collection
        path = self.path(kind)
        if not path.exists():
            return self.build(rec.index_factory, save=self.writable, kind=kind)
        for attempt in (1, 2):
            saved = _Saved.of(rec, kind)
            try:
                index = self._read(path, rec, saved, kind)
                break
            except VectorIndexError as exc:
                if attempt == 1 and isinstance(exc, IndexChecksumError):
                    # a writer may have replaced the file a moment before recording its checksum
                    time.sleep(0.2)
                    rec = self.refresh_record()
                    continue
                log.warning("%s; rebuilding it from the store", exc)
                return self.build(rec.index_factory, save=self.writable, kind=kind)
        index = self.reconcile(index, kind)
        if saved.checksum is None and self.writable:  # written before checksums were kept: record one now
            self._save(index, self.store.current_seq(rec.id), kind)
        return index

    def _read(self, path: Path, rec: CollectionRecord, saved: _Saved, kind: VectorKind) -> BaseIndex:
        if saved.checksum is not None and saved.checksum.startswith(ONDISK_PREFIX):
            current = getattr(self, "images", None) if kind == "images" else self._texts
            return OnDiskIndex.load(path, rec.index_factory, rec.dim, saved.note, saved.checksum, reuse=current)
        return VectorIndex.load(path, rec.index_factory, rec.dim, note=saved.note, checksum=saved.checksum)

    def reconcile(self, index: BaseIndex, kind: VectorKind = "images") -> BaseIndex:
        """Make the index's id set equal the live rows, and re-add rows written after it was saved.

        Every insert and update takes a new sequence number, so when none was taken since the index
        was saved and the row count still equals its size, nothing was added, changed or removed:
        the id sets are not read (at 100M rows that read is minutes). Otherwise they are compared."""
        cid = self.collection.id
        saved_seq = _Saved.of(self.collection, kind).seq
        seq = self.store.current_seq(cid)  # read first: later writes look newer, never older
        if seq == saved_seq and self.store.count_live(cid, kind) == index.ntotal:
            return index
        live = self.store.live_ids(cid, kind)
        present = index.ids()
        stale = np.setdiff1d(present, live)
        missing = np.setdiff1d(live, present)
        changed = np.intersect1d(self.store.ids_newer_than(cid, saved_seq, kind), present)
        if not (stale.size or missing.size or changed.size):
            return index
        log.info("reconciling the %s index: %d stale, %d missing, %d changed", kind, stale.size, missing.size,
                 changed.size)
        try:
            index.remove(np.concatenate([stale, changed]).tolist())
        except VectorIndexError:
            return self.build(self.collection.index_factory, save=self.writable, kind=kind)
        todo = np.concatenate([missing, changed])
        for start in range(0, todo.size, _RECONCILE_CHUNK):  # a writer may remove rows meanwhile
            index.add(*self.store.live_vectors(cid, todo[start : start + _RECONCILE_CHUNK].tolist(), kind))
        if self.writable:
            self._save(index, seq, kind)
        return index

    # -- building ---------------------------------------------------------------------------
    def build(self, factory: str, *, save: bool, kind: VectorKind = "images") -> BaseIndex:
        """A new index of ``kind`` from every stored vector (saved and recorded when ``save``)."""
        cid = self.collection.id
        seq = self.store.current_seq(cid)
        if is_ondisk(factory):
            index = self._build_ondisk(factory, kind)
        else:
            ids, vecs = self.store.all_vectors(cid, kind)
            index = VectorIndex.build(factory, self.collection.dim, ids, vecs)
        if save:
            self._save(index, seq, kind)
        return index

    def _build_ondisk(self, factory: str, kind: VectorKind) -> BaseIndex:
        """Train, add in shards and merge on disk (see :mod:`searchengine.index.ondisk`); files are written even
        when the caller records them later. With too few vectors to train, exact search in memory."""
        if not self.writable:
            raise VectorIndexError(f"the {kind} index of collection {self.collection.name!r} ({factory}) is missing "
                                   "or does not match the store; it is built on disk by a writer: run "
                                   "`searchengine rebuild-index`")
        stats = BuildStats()
        try:
            index: BaseIndex = build_from_store(self.store, self.collection.id, kind, factory, self.collection.dim,
                                                  self.path(kind), self.options, stats)
        except TooFewVectorsError as exc:
            index = VectorIndex.create(factory, self.collection.dim)
            index.note, index.chosen = f"{FALLBACK_NOTE}: {exc}", "Flat"
            for ids, vecs in self.store.iter_vectors(self.collection.id, kind=kind):
                index.add(ids, vecs)
        if kind == "images":
            self.last_build = stats
        return index

    def rebuild(self, index_factory: str | None = None) -> int:
        """Rebuild both indexes from the stored vectors (optionally with another factory); returns
        the image vectors indexed."""
        factory = normalize_factory(index_factory or self.collection.index_factory)
        VectorIndex.create(factory, self.collection.dim)  # validates the factory before anything is written
        self.stale = False
        if factory == self.collection.index_factory:
            self.images = self.build(factory, save=True)
            self._texts = self.build(factory, save=True, kind="texts")
            return self.images.ntotal
        # Another factory: both files are written before the factory is recorded, their checksums
        # after it. A kill in between leaves files whose checksums are not recorded: they are rebuilt
        # on open with the factory that is, never read as an index of another type.
        cid, built = self.collection.id, []
        for kind in KINDS:
            seq = self.store.current_seq(cid)
            index = self.build(factory, save=False, kind=kind)
            built.append((kind, index, seq, index.save(self.path(kind))))
        self.store.set_index_factory(cid, factory)
        for kind, index, seq, checksum in built:
            self.store.set_index_state(cid, seq, index.note, kind, checksum)
            remove_unused_files(self.path(kind), index)
        self.refresh_record()
        self.images, self._texts = built[0][1], built[1][1]
        return self.images.ntotal

    def build_ondisk(self, factory: str, *, sample: int | None = None, shard_size: int | None = None) -> int:
        """Rebuild both indexes as inverted files on disk (``factory``: e.g. ``IVF65536,PQ32``)."""
        options = BuildOptions(sample=sample, shard_size=shard_size or BuildOptions.shard_size)
        if options.shard_size < 1 or (sample is not None and sample < 1):
            raise VectorIndexError("the sample and the shard size must be at least 1")
        inner = base_factory(factory)
        self.options = options
        try:
            return self.rebuild(ONDISK_PREFIX + inner)
        finally:
            self.options = BuildOptions()

    # -- writers ----------------------------------------------------------------------------
    def apply(self, added: Sequence[int] = (), vectors: Sequence[np.ndarray] = (),
              removed: Sequence[int] = ()) -> None:
        """Apply a batch the store has just committed to the image index: ``removed`` ids (removed
        rows, and the old vectors of updated ones) leave it, then ``added`` ids come in with their
        vectors. An index type that cannot take the change is marked stale and rebuilt at
        :meth:`commit`."""
        if self.stale or not (len(added) or len(removed)):
            return
        try:
            if len(removed):
                self.images.remove(list(removed))
            if len(added):
                self.images.add(np.asarray(added, dtype=np.int64), np.stack(list(vectors)))
        except VectorIndexError:
            self.stale = True

    def commit(self, complete_to: int | None = None, *, grew: bool = False) -> None:
        """End a writer's run: rebuild from the store when the index is stale (or an untrained
        fallback index ``grew``), else save the image index and bring the text index up to date."""
        if self.stale or (grew and self.images.untrained_fallback):
            self.rebuild()
        else:
            self.save(complete_to)

    def save(self, complete_to: int | None = None) -> None:
        """Save the in-memory image index and bring the text index up to date.

        ``complete_to``: the store's sequence number the index is known to hold every change up to,
        when a later committed batch may be missing from it (default: it is in step with the store).
        An ``auto`` index that no longer fits the collection's size (it crossed the exact-search
        limit, or grew or shrank 4x since its inverted file was trained) is rebuilt instead."""
        if needs_rechoice(self.images):
            log.info("the collection now holds %d vectors: choosing its index again", self.images.ntotal)
            self.images = self.build(self.collection.index_factory, save=True)
        else:
            seq = self.store.current_seq(self.collection.id) if complete_to is None else complete_to
            self._save(self.images, seq)
        self.sync_texts()

    def sync_texts(self) -> None:
        """Bring the text index in step with the stored captions and titles (and save it)."""
        if self._texts is None:
            self._texts = self.load("texts")
        else:
            self._texts = self.reconcile(self._texts, "texts")
        if needs_rechoice(self._texts):
            self._texts = self.build(self.collection.index_factory, save=self.writable, kind="texts")

    def _save(self, index: BaseIndex, seq: int, kind: VectorKind = "images") -> None:
        checksum = index.save(self.path(kind))
        self.store.set_index_state(self.collection.id, seq, index.note, kind, checksum)
        self.refresh_record()
        remove_unused_files(self.path(kind), index)  # earlier builds' lists, once nothing refers to them
