"""Images: the per-file rows (with what was read next to and inside each file), the writer's
batch transaction, and the per-file errors of what could not be indexed."""

from __future__ import annotations

import time
from typing import Iterable, Mapping, Sequence

import numpy as np
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.engine import Connection

from .. import keywords
from ..codec import pack_vectors
from ..database import Repository, chunks, ids_in, insert_or
from ..documents import refresh_docs
from ..records import FileErrorRecord, ImageRecord, NewImage, file_type
from ..rows import (
    IMAGE_COLS,
    clear_errors,
    forget_derived,
    insert_attributes,
    next_seq,
    sync_texts,
    write_errors,
)
from ..schema import attributes, file_errors, images

__all__ = ["ImagesRepo"]


class ImagesRepo(Repository):
    """The ``images`` and ``file_errors`` tables."""

    def count_images(self, collection_id: int) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(images)
                                    .where(images.c.collection_id == collection_id)).scalar_one())

    def images_by_ids(self, collection_id: int, ids: Iterable[int]) -> dict[int, ImageRecord]:
        id_list = [int(i) for i in ids]
        out: dict[int, ImageRecord] = {}
        with self.db.connect() as conn:
            for chunk in chunks(id_list, 900):
                rows = conn.execute(select(*IMAGE_COLS).where(
                    ids_in(images, collection_id, chunk)))
                out.update({r.id: ImageRecord(**r._mapping) for r in rows})
        return out

    def image_by_path(self, collection_id: int, path: str) -> ImageRecord | None:
        with self.db.connect() as conn:
            row = conn.execute(select(*IMAGE_COLS).where(
                images.c.collection_id == collection_id, images.c.path == path)).first()
        return ImageRecord(**row._mapping) if row else None

    def images_at(self, collection_id: int, paths: Iterable[str]) -> list[ImageRecord]:
        """Rows at exactly these paths."""
        out: list[ImageRecord] = []
        with self.db.connect() as conn:
            for chunk in chunks(sorted(set(paths)), 900):
                rows = conn.execute(select(*IMAGE_COLS).where(images.c.collection_id == collection_id,
                                                              images.c.path.in_(chunk)))
                out.extend(ImageRecord(**r._mapping) for r in rows)
        return out

    def images_under(self, collection_id: int, roots: Sequence[str]) -> list[ImageRecord]:
        """Rows whose path is one of ``roots`` or lies below one of them."""
        out: list[ImageRecord] = []
        with self.db.connect() as conn:
            for chunk in chunks(list(roots), 200):  # bounded expression depth for many roots
                conds = []
                for root in chunk:
                    prefix = root.rstrip("/") + "/"
                    conds += [images.c.path == root, func.substr(images.c.path, 1, len(prefix)) == prefix]
                rows = conn.execute(select(*IMAGE_COLS).where(images.c.collection_id == collection_id, or_(*conds)))
                out.extend(ImageRecord(**r._mapping) for r in rows)
        return out

    def all_images(self, collection_id: int) -> list[ImageRecord]:
        with self.db.connect() as conn:
            rows = conn.execute(select(*IMAGE_COLS).where(images.c.collection_id == collection_id)
                                .order_by(images.c.id))
            return [ImageRecord(**r._mapping) for r in rows]

    def hash_index(self, collection_id: int) -> list[tuple[str, int, str]]:
        """(content hash, id, path) of every row, in id order."""
        with self.db.connect() as conn:
            rows = conn.execute(select(images.c.content_hash, images.c.id, images.c.path)
                                .where(images.c.collection_id == collection_id).order_by(images.c.id))
            return [(h, int(i), p) for h, i, p in rows]

    def ocr_hashes(self, collection_id: int) -> frozenset[str]:
        """Contents whose text has been read (OCR), even if none was found."""
        with self.db.connect() as conn:
            return frozenset(conn.execute(select(images.c.content_hash).where(
                images.c.collection_id == collection_id, images.c.ocr_text.is_not(None))).scalars())

    def claim_for_folder(self, ids: Sequence[int]) -> None:
        """Rows a catalog brought in that a folder run also covers: no longer removed with their products."""
        with self.db.begin() as conn:
            for chunk in chunks(list(ids), 900):
                conn.execute(update(images).where(images.c.id.in_(chunk)).values(source="folder"))

    # -- the writer's transaction ---------------------------------------------------------
    def write_batch(self, collection_id: int, *, new: Sequence[NewImage] = (), new_vectors: np.ndarray | None = None,
                    updated: Sequence[tuple[int, NewImage]] = (), updated_vectors: np.ndarray | None = None,
                    moved: Sequence[tuple[int, NewImage]] = (), touched: Sequence[tuple[int, NewImage]] = (),
                    removed: Sequence[int] = (), errors: Sequence[FileErrorRecord] = (),
                    cleared_errors: Sequence[str] = (),
                    text_vectors: Mapping[str, np.ndarray] | None = None) -> tuple[list[int], int]:
        """Apply one batch of changes in one transaction; returns (ids of ``new``, the batch's seq).

        Every written row also gets its caption, date, text, attributes and keyword document;
        ``text_vectors`` maps :func:`~searchengine.hashing.text_hash` of each new caption to its vector.
        """
        now = time.time()
        with self.db.begin() as conn:
            seq = next_seq(conn, collection_id)
            if removed:
                keywords.remove(conn, list(removed))
                for chunk in chunks(list(removed), 900):
                    conn.execute(delete(images).where(ids_in(images, collection_id, chunk)))
            for image_id, n in moved:
                conn.execute(update(images).where(images.c.id == image_id).values(
                    path=n.path, size=n.size, mtime=n.mtime, ext=file_type(n.path)))
            if updated:
                forget_derived(conn, [i for i, _ in updated])
                for (image_id, n), blob in zip(updated, pack_vectors(updated_vectors)):
                    conn.execute(update(images).where(images.c.id == image_id).values(
                        path=n.path, size=n.size, mtime=n.mtime, content_hash=n.content_hash, ext=file_type(n.path),
                        width=n.width, height=n.height, vector=blob, seq=seq, indexed_at=now))
            new_ids = _insert_new(conn, collection_id, seq, now, new, new_vectors) if new else []
            for image_id, n in touched:
                conn.execute(update(images).where(images.c.id == image_id).values(size=n.size, mtime=n.mtime))
            written = list(zip(new_ids, new)) + [*updated, *moved, *touched]
            _write_image_meta(conn, collection_id, seq, written, text_vectors or {})
            clear_errors(conn, collection_id, [n.path for _, n in written] + list(cleared_errors))
            write_errors(conn, collection_id, errors)
        return new_ids, seq

    # -- errors ---------------------------------------------------------------------------
    def file_errors(self, collection_id: int, roots: Sequence[str] | None = None) -> list[FileErrorRecord]:
        with self.db.connect() as conn:
            rows = conn.execute(select(file_errors.c.path, file_errors.c.error, file_errors.c.size, file_errors.c.mtime,
                                       file_errors.c.at).where(file_errors.c.collection_id == collection_id)
                                .order_by(file_errors.c.path))
            recs = [FileErrorRecord(**r._mapping) for r in rows]
        if roots is None:
            return recs
        prefixes = tuple(r.rstrip("/") + "/" for r in roots)
        return [e for e in recs if e.path in roots or e.path.startswith(prefixes)]

    def count_errors(self, collection_id: int) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(file_errors)
                                    .where(file_errors.c.collection_id == collection_id)).scalar_one())


def _insert_new(conn: Connection, collection_id: int, seq: int, now: float, new: Sequence[NewImage],
                vectors: np.ndarray | None) -> list[int]:
    """Insert new rows by path (a row written at the same path meanwhile is replaced and keeps its
    id, losing what was derived from its old content); their ids, in order."""
    rows = [dict(collection_id=collection_id, path=n.path, size=n.size, mtime=n.mtime,
                 content_hash=n.content_hash, width=n.width, height=n.height, vector=b, ext=file_type(n.path),
                 source=n.source, seq=seq, indexed_at=now) for n, b in zip(new, pack_vectors(vectors))]
    upsert = insert_or(conn, images, ["collection_id", "path"], [c for c in rows[0] if c != "collection_id"])
    by_path = {p: int(i) for i, p in conn.execute(upsert.returning(images.c.id, images.c.path), rows)}
    new_ids = [by_path[n.path] for n in new]
    forget_derived(conn, new_ids)  # of such a row's old content
    return new_ids


def _write_image_meta(conn: Connection, cid: int, seq: int, written: Sequence[tuple[int, NewImage]],
                      text_vectors: Mapping[str, np.ndarray]) -> None:
    """The written rows' caption, date, text, sidecar signature, attributes, text rows and documents."""
    if not written:
        return
    ids = [i for i, _ in written]
    for image_id, n in written:
        conn.execute(update(images).where(images.c.id == image_id).values(
            caption=n.caption, taken_at=n.taken_at, ocr_text=n.ocr_text, sidecar_sig=n.sidecar_sig))
    for chunk in chunks(ids, 900):
        conn.execute(delete(attributes).where(attributes.c.image_id.in_(chunk)))
    insert_attributes(conn, cid, [("image_id", i, n.attributes) for i, n in written])
    sync_texts(conn, cid, seq, "image_id", [(i, "caption", n.caption) for i, n in written], text_vectors)
    refresh_docs(conn, ids)
