"""Write stage: resolve each decoded file (new, changed, moved, duplicate), encode the
batch, write rows + vectors to the store (one transaction a batch), then the index."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from searchengine.engine import SearchEngine
from searchengine.errors import VectorIndexError
from searchengine.store import FileErrorRecord, ImageRecord, NewImage, as_stored

from .diff import Plan
from .pipeline import Decoded

__all__ = ["Writer", "IndexReport"]


@dataclass
class IndexReport:
    """What one ``index`` run did."""

    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    duplicates: int = 0  # files whose content was already encoded (vector reused)
    encoded: int = 0  # images that went through the model
    known_failures: int = 0  # files with a recorded error, unchanged, not retried
    seconds: float = 0.0
    errors: list[FileErrorRecord] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "errors"}
        out["errors"] = [{"path": e.path, "error": e.error} for e in self.errors]
        return out


@dataclass
class _Item:
    decoded: Decoded
    row: ImageRecord | None  # the row at this path, if any
    source_id: int | None = None  # reuse this row's vector
    move_of: ImageRecord | None = None
    dims: tuple[int, int] | None = None  # (width, height) of the reused source


class Writer:
    """Applies decoded files to one collection, a batch at a time."""

    def __init__(self, engine: SearchEngine, plan: Plan, report: IndexReport) -> None:
        self.engine = engine
        self.cid = engine.collection.id
        self.plan = plan
        self.report = report
        self.hash_to_id: dict[str, int] = engine.store.known_hashes(self.cid)
        self.vanished_by_hash: dict[str, list[ImageRecord]] = {}
        for row in plan.vanished:
            self.vanished_by_hash.setdefault(row.content_hash, []).append(row)
        self.claimed: set[int] = set()
        self.needs_rebuild = False
        self.wrote = False

    def write(self, batch: list[Decoded]) -> None:
        new, new_vecs, upd, upd_vecs = [], [], [], []
        moved, touched, errors = [], [], []
        items = [self._resolve(d) for d in batch]
        vectors = self._vectors(items)
        for item, vec in zip(items, vectors):
            d = item.decoded
            if d.error is not None:
                errors.append(FileErrorRecord(d.entry.path, d.error, d.entry.size, d.entry.mtime, time.time()))
                continue
            if item.move_of is not None:
                moved.append((item.move_of.id, self._record(d, item.move_of.width, item.move_of.height)))
            elif item.row is not None and item.row.content_hash == d.content_hash:
                touched.append((item.row.id, d.entry.size, d.entry.mtime))
            elif item.row is not None:
                upd.append((item.row.id, self._record(d, *(item.dims or (None, None)))))
                upd_vecs.append(vec)
            else:
                new.append(self._record(d, *(item.dims or (None, None))))
                new_vecs.append(vec)
        new_ids, _ = self.engine.store.write_batch(
            self.cid, new=new, new_vectors=_stack(new_vecs), updated=upd, updated_vectors=_stack(upd_vecs),
            moved=moved, touched=touched, errors=errors)
        self.wrote = True
        for rec, i in zip(new, new_ids):
            self.hash_to_id.setdefault(rec.content_hash, i)
        for i, rec in upd:
            self.hash_to_id.setdefault(rec.content_hash, i)
        self._update_index([i for i, _ in upd] + new_ids, upd_vecs + new_vecs, [i for i, _ in upd])
        r = self.report
        r.added += len(new)
        r.updated += len(upd)
        r.moved += len(moved)
        r.unchanged += len(touched)  # only the timestamp changed
        r.failed += len(errors)
        r.errors.extend(errors)

    def _resolve(self, d: Decoded) -> _Item:
        item = _Item(d, self.plan.existing.get(d.entry.path))
        if d.error is not None or (item.row is not None and item.row.content_hash == d.content_hash):
            return item
        if item.row is None:
            for cand in self.vanished_by_hash.get(d.content_hash, ()):
                if cand.id not in self.claimed:
                    self.claimed.add(cand.id)
                    item.move_of = cand
                    return item
        item.source_id = self.hash_to_id.get(d.content_hash)
        return item

    def _vectors(self, items: list[_Item]) -> list[np.ndarray | None]:
        """One vector per item that needs one: reused from the store, or encoded (each content once)."""
        out: list[np.ndarray | None] = [None] * len(items)
        needs = [i for i, it in enumerate(items)
                 if it.decoded.error is None and it.move_of is None
                 and not (it.row is not None and it.row.content_hash == it.decoded.content_hash)]
        reuse = [i for i in needs if items[i].source_id is not None]
        if reuse:
            sources = [items[i].source_id for i in reuse]
            vecs = self.engine.store.vectors_for(self.cid, sources)
            rows = self.engine.store.images_by_ids(self.cid, sources)
            for i, v in zip(reuse, vecs):
                out[i] = v
                src = rows[items[i].source_id]
                items[i].dims = (src.width, src.height)
        first_by_hash: dict[str, int] = {}
        for i in needs:
            if items[i].source_id is None:
                first_by_hash.setdefault(items[i].decoded.content_hash, i)
        order = list(first_by_hash.values())
        if order:
            encoded = as_stored(self.engine.encoder.encode_pixels([items[i].decoded.pixels for i in order]))
            self.report.encoded += len(order)
            by_hash = {items[i].decoded.content_hash: v for i, v in zip(order, encoded)}
            for i in needs:
                if out[i] is None:
                    out[i] = by_hash[items[i].decoded.content_hash]
                    if i not in order:
                        self.report.duplicates += 1
        self.report.duplicates += len(reuse)
        return out

    def _update_index(self, ids: list[int], vecs: list[np.ndarray], replaced: list[int]) -> None:
        if self.needs_rebuild or not ids:
            return
        index = self.engine.index
        try:
            if replaced:
                index.remove(replaced)
            index.add(np.asarray(ids, dtype=np.int64), np.stack(vecs))
        except VectorIndexError:
            self.needs_rebuild = True  # e.g. HNSW cannot remove; rebuilt from the store at the end

    def finish(self, stale_errors: list[str]) -> None:
        """Remove rows whose file is gone (and was not found moved), then save the index."""
        gone = [r.id for r in self.plan.vanished if r.id not in self.claimed]
        if gone or stale_errors:
            self.engine.store.write_batch(self.cid, removed=gone, cleared_errors=stale_errors)
            self.wrote = True
            if gone and not self.needs_rebuild:
                try:
                    self.engine.index.remove(gone)
                except VectorIndexError:
                    self.needs_rebuild = True
        self.report.removed = len(gone)
        self.save()

    def save(self) -> None:
        if self.needs_rebuild or (self.engine.index.note and self.report.added):
            self.engine.rebuild_index()  # untrained or non-removable index types: rebuilt from the store
        elif self.wrote:
            self.engine.save_index()

    @staticmethod
    def _record(d: Decoded, width: int | None = None, height: int | None = None) -> NewImage:
        return NewImage(path=d.entry.path, size=d.entry.size, mtime=d.entry.mtime, content_hash=d.content_hash or "",
                        width=width if width is not None else d.width, height=height if height is not None else d.height)


def _stack(vecs: list[np.ndarray]) -> np.ndarray | None:
    return np.stack(vecs) if vecs else None
