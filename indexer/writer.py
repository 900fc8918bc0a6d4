"""Write stage: resolve each decoded file (new, changed, moved, duplicate), encode the
batch, write rows + vectors to the store (one transaction a batch), then the index."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np

from searchengine.engine import SearchEngine
from searchengine.hashing import text_hash
from searchengine.store import FileErrorRecord, ImageRecord, NewImage, as_stored

from .diff import Plan
from .pipeline import Decoded

__all__ = ["Writer", "IndexReport"]

log = logging.getLogger(__name__)


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
    captions: int = 0  # captions encoded with the text tower
    sidecar_errors: int = 0  # unreadable caption sidecars (the images were still indexed)
    known_failures: int = 0  # files with a recorded error, unchanged, not retried
    seconds: float = 0.0
    errors: list[FileErrorRecord] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "errors"}
        out["errors"] = [{"path": e.path, "error": e.error} for e in self.errors]
        return out


Kind = Literal["error", "touch", "move", "reuse", "encode"]


@dataclass
class _Item:
    decoded: Decoded
    row: ImageRecord | None  # the row at this path, if any
    kind: Kind = "encode"
    source_id: int | None = None  # "reuse": the row whose vector this content already has
    move_of: ImageRecord | None = None  # "move": the vanished row this file is
    vector: np.ndarray | None = None  # "reuse" by value: a rewritten row's old vector
    dims: tuple[int, int] | None = None  # (width, height) of the reused source
    ocr: str | None = None  # the text read in the reused source


class Writer:
    """Applies decoded files to one collection, a batch at a time."""

    def __init__(self, engine: SearchEngine, plan: Plan, report: IndexReport, source: str = "folder") -> None:
        self.engine = engine
        self.source = source  # what new rows record as their origin: "folder" or "catalog"
        self.cid = engine.collection.id
        self.plan = plan
        self.report = report
        # Contents with a trustworthy vector: rows that this run does not touch (a candidate's row
        # may get new content, so its old hash must not point at it).
        candidates = {e.path for e in plan.candidates}
        self.hash_to_id: dict[str, int] = {}
        for content, image_id, path in engine.store.hash_index(self.cid):
            if path not in candidates:
                self.hash_to_id.setdefault(content, image_id)
        # A candidate row's old content stays reusable: from the row until it is rewritten, then
        # from ``orphans`` (its old vector, kept when the row is rewritten). Swaps and
        # backup-then-edit thus encode nothing twice.
        self.old_by_hash: dict[str, int] = {}
        for path in candidates & plan.existing.keys():
            row = plan.existing[path]
            if row.content_hash not in self.hash_to_id:
                self.old_by_hash.setdefault(row.content_hash, row.id)
        self.orphans: dict[str, tuple[np.ndarray, tuple[int, int], str | None]] = {}
        self.known_hashes = frozenset(self.hash_to_id) | frozenset(self.old_by_hash)
        self.own_hashes = {p: plan.existing[p].content_hash for p in candidates if p in plan.existing}
        self.vanished_by_hash: dict[str, list[ImageRecord]] = {}
        for row in plan.vanished:
            self.vanished_by_hash.setdefault(row.content_hash, []).append(row)
        self.claimed: set[int] = set()
        self.wrote = False
        # The store's sequence number the in-memory index holds every change up to, and whether a
        # committed batch may be missing from it (an interruption between the store's commit and
        # the index update): a save then records that number, not the store's latest, so the next
        # open compares the id sets instead of trusting a count.
        self.complete_to = engine.store.current_seq(self.cid)
        self.in_step = True

    def write(self, batch: list[Decoded], encoded: Mapping[str, np.ndarray] | None = None) -> None:
        """Apply ``batch``; ``encoded`` holds vectors already computed elsewhere (by content hash, as
        the encoder returned them), used instead of the model for contents to be encoded."""
        items = [self._resolve(d) for d in batch]
        vectors = self._vectors(items, encoded or {})
        self._keep_old_vectors([it.row for it in items if it.row is not None and it.kind != "touch"])
        new, new_vecs, upd, upd_vecs = [], [], [], []
        moved, touched, errors, dropped = [], [], [], []
        for item, vec in zip(items, vectors):
            d = item.decoded
            if d.sidecar_error:
                log.warning("%s: %s", d.entry.path, d.sidecar_error)
                self.report.sidecar_errors += 1
            if item.kind == "error":
                errors.append(FileErrorRecord(d.entry.path, d.error or "", d.entry.size, d.entry.mtime, time.time()))
                if item.row is not None:
                    dropped.append(item.row.id)  # an indexed file that is no longer a readable image
            elif item.kind == "move":
                moved.append((item.move_of.id, self._record(d, (item.move_of.width, item.move_of.height),
                                                            item.move_of.ocr_text)))
            elif item.kind == "touch":
                touched.append((item.row.id, self._record(d, ocr=item.row.ocr_text)))
            elif item.row is not None:
                upd.append((item.row.id, self._record(d, item.dims, item.ocr)))
                upd_vecs.append(vec)
            else:
                new.append(self._record(d, item.dims, item.ocr))
                new_vecs.append(vec)
        captions = [n.caption for n in new] + [n.caption for _, n in (*upd, *moved, *touched)]
        text_vecs = self._text_vectors(captions)
        self.in_step = False
        new_ids, seq = self.engine.store.write_batch(
            self.cid, new=new, new_vectors=_stack(new_vecs), updated=upd, updated_vectors=_stack(upd_vecs),
            moved=moved, touched=touched, removed=dropped, errors=errors, text_vectors=text_vecs)
        self.wrote = True
        for image_id, rec in list(zip(new_ids, new)) + [(i, rec) for i, rec in upd]:
            self.hash_to_id.setdefault(rec.content_hash, image_id)
        self._update_index([i for i, _ in upd] + new_ids, upd_vecs + new_vecs, [i for i, _ in upd] + dropped)
        self.complete_to, self.in_step = seq, True
        r = self.report
        r.added += len(new)
        r.updated += len(upd)
        r.moved += len(moved)
        r.unchanged += len(touched)  # only the timestamp changed
        r.failed += len(errors)
        r.removed += len(dropped)
        r.errors.extend(errors)

    def _resolve(self, d: Decoded) -> _Item:
        item = _Item(d, self.plan.existing.get(d.entry.path))
        if d.error is not None:
            item.kind = "error"
        elif item.row is not None and item.row.content_hash == d.content_hash:
            item.kind = "touch"
        elif item.row is None and (move := self._claim_move(d.content_hash)) is not None:
            item.kind, item.move_of = "move", move
        elif d.content_hash in self.orphans:
            item.kind = "reuse"
            item.vector, item.dims, item.ocr = self.orphans[d.content_hash]
        elif (source := self.hash_to_id.get(d.content_hash or "", self.old_by_hash.get(d.content_hash or ""))) is not None:
            item.kind, item.source_id = "reuse", source
        return item

    def _keep_old_vectors(self, rewritten: list[ImageRecord]) -> None:
        """Before rows get new content, keep the old vectors other files may still need."""
        keep = [r for r in rewritten if self.old_by_hash.get(r.content_hash) == r.id]
        if keep:
            for row, vec in zip(keep, self.engine.store.vectors_for(self.cid, [r.id for r in keep])):
                self.orphans[row.content_hash] = (vec, (row.width, row.height), row.ocr_text)
                del self.old_by_hash[row.content_hash]

    def _claim_move(self, content: str | None) -> ImageRecord | None:
        for cand in self.vanished_by_hash.get(content or "", ()):
            if cand.id not in self.claimed:
                self.claimed.add(cand.id)
                return cand
        return None

    def _vectors(self, items: list[_Item], given: Mapping[str, np.ndarray]) -> list[np.ndarray | None]:
        """A vector per "reuse" and "encode" item: copied from the store, taken from ``given`` (computed
        by a distributed runner), or encoded (each content once)."""
        out: list[np.ndarray | None] = [None] * len(items)
        reuse = [i for i, it in enumerate(items) if it.kind == "reuse"]
        by_id = [i for i in reuse if items[i].vector is None]
        if by_id:
            sources = [items[i].source_id for i in by_id]
            rows = self.engine.store.images_by_ids(self.cid, sources)
            for i, vec in zip(by_id, self.engine.store.vectors_for(self.cid, sources)):
                source = rows[items[i].source_id]
                items[i].vector, items[i].dims, items[i].ocr = vec, (source.width, source.height), source.ocr_text
        for i in reuse:
            out[i] = items[i].vector
        first: dict[str, int] = {}
        encode = [i for i, it in enumerate(items) if it.kind == "encode"]
        for i in encode:
            first.setdefault(items[i].decoded.content_hash or "", i)
        if first:
            by_hash = {h: as_stored(given[h]) for h in first if h in given}
            todo = [h for h in first if h not in by_hash]
            if todo:
                pixels = [items[first[h]].decoded.pixels for h in todo]
                if any(p is None for p in pixels):
                    raise RuntimeError("a file to encode came without pixels or a computed vector")
                by_hash.update(zip(todo, as_stored(self.engine.encoder.encode_pixels(pixels))))
            for i in encode:
                out[i] = by_hash[items[i].decoded.content_hash or ""]
            self.report.encoded += len(first)
        self.report.duplicates += len(reuse) + len(encode) - len(first)
        return out

    def _update_index(self, ids: list[int], vecs: list[np.ndarray], replaced: list[int]) -> None:
        # replaced: updated rows' old vectors, and rows whose file is no longer a readable image
        self.engine.indexes.apply(ids, vecs, replaced)

    def finish(self, stale_errors: list[str]) -> None:
        """Remove rows whose file is gone (and was not found moved), then save the index."""
        gone = [r.id for r in self.plan.vanished if r.id not in self.claimed]
        if gone or stale_errors:
            self.in_step = False
            _, seq = self.engine.store.write_batch(self.cid, removed=gone, cleared_errors=stale_errors)
            self.wrote = True
            self.engine.indexes.apply(removed=gone)
            self.complete_to, self.in_step = seq, True
        self.report.removed += len(gone)
        self.save()

    def save(self) -> None:
        """Save the index, or rebuild it from the store when it could not take the changes."""
        if self.wrote:
            self.engine.indexes.commit(None if self.in_step else self.complete_to, grew=self.report.added > 0)

    def _text_vectors(self, captions: list[str | None]) -> dict[str, np.ndarray]:
        found, encoded = text_vectors(self.engine, captions)
        self.report.captions += encoded
        return found

    def _record(self, d: Decoded, dims: tuple[int, int] | None = None, ocr: str | None = None) -> NewImage:
        width, height = dims or (d.width, d.height)
        return NewImage(path=d.entry.path, size=d.entry.size, mtime=d.entry.mtime, content_hash=d.content_hash or "",
                        width=width, height=height, caption=d.caption, taken_at=d.taken_at,
                        ocr_text=d.ocr_text if d.ocr_text is not None else ocr, sidecar_sig=d.entry.sidecar,
                        attributes=d.attributes, source=self.source)


def text_vectors(engine: SearchEngine, texts: list[str | None]) -> tuple[dict[str, np.ndarray], int]:
    """Vectors for these texts by :func:`text_hash`: stored ones reused, the others encoded with the
    text tower (each distinct text once); also returns how many were encoded."""
    wanted = {text_hash(t.strip()): t.strip() for t in texts if t and t.strip()}
    if not wanted:
        return {}, 0
    found = engine.store.text_vectors_by_hash(engine.collection.id, wanted)
    missing = [h for h in wanted if h not in found]
    for start in range(0, len(missing), 256):
        chunk = missing[start : start + 256]
        found.update(zip(chunk, as_stored(engine.encoder.encode_texts([wanted[h] for h in chunk]))))
    return found, len(missing)


def _stack(vecs: list[np.ndarray]) -> np.ndarray | None:
    return np.stack(vecs) if vecs else None
