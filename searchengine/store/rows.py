"""Row helpers the repositories share, each on a connection the caller's transaction holds:
sequence numbers, attributes, text rows and what was derived from an image's content, file errors."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from ..errors import StoreError
from ..hashing import text_hash
from .codec import pack_vectors
from .database import chunks, insert_or
from .records import Attributes, FileErrorRecord, number, value_text
from .schema import attributes, collections, file_errors, images, tags, texts

__all__ = [
    "IMAGE_COLS", "next_seq", "collection_dim", "insert_attributes", "attributes_of", "sync_texts", "forget_derived",
    "tags_of", "generated_of", "write_errors", "clear_errors",
]

#: The columns an :class:`~.records.ImageRecord` is read from.
IMAGE_COLS = (images.c.id, images.c.path, images.c.size, images.c.mtime, images.c.content_hash,
              images.c.width, images.c.height, images.c.indexed_at, images.c.caption, images.c.taken_at,
              images.c.ocr_text, images.c.sidecar_sig, images.c.source)


def next_seq(conn: Connection, collection_id: int) -> int:
    """Take the collection's next sequence number: one atomic increment, so concurrent writers
    never share one (a read, then a write, would let both read the same number)."""
    taken = conn.execute(update(collections).where(collections.c.id == collection_id)
                         .values(next_seq=collections.c.next_seq + 1).returning(collections.c.next_seq)).scalar_one()
    return int(taken) - 1


def collection_dim(conn: Connection, collection_id: int) -> int:
    """The dimension of the collection's vectors."""
    return int(conn.execute(select(collections.c.dim).where(collections.c.id == collection_id)).scalar_one())


def insert_attributes(conn: Connection, cid: int, owners: Sequence[tuple[str, int, Attributes]]) -> None:
    """Add the attributes of each (owner column, owner id, attributes); keys are casefolded, blanks skipped."""
    rows = []
    for owner, owner_id, attrs in owners:
        for key, values in attrs.items():
            key = key.strip().casefold()
            for value in (values if isinstance(values, (list, tuple)) else [values]):
                shown = value_text(value)
                if key and shown.strip():
                    rows.append({"collection_id": cid, owner: owner_id, "key": key, "value": shown,
                                 "value_norm": shown.casefold().strip(), "value_num": number(value)})
    if rows:
        conn.execute(insert(attributes), rows)


def attributes_of(conn: Connection, owner: str, ids: Sequence[int]) -> dict[int, dict[str, list[str]]]:
    """owner id -> key -> values, in the order they were written (``owner``: image_id or product_id)."""
    out: dict[int, dict[str, list[str]]] = {}
    col = attributes.c[owner]
    for chunk in chunks(list(ids), 900):
        for owner_id, key, value in conn.execute(select(col, attributes.c.key, attributes.c.value)
                                                 .where(col.in_(chunk)).order_by(attributes.c.id)):
            out.setdefault(int(owner_id), {}).setdefault(key, []).append(value)
    return out


def sync_texts(conn: Connection, cid: int, seq: int, owner: str, wanted: Sequence[tuple[int, str, str | None]],
               vectors: Mapping[str, np.ndarray]) -> None:
    """Make each (owner, field) have exactly the wanted text; unchanged texts keep their row and vector."""
    col = texts.c[owner]
    have: dict[tuple[int, str], tuple[int, str]] = {}
    for chunk in chunks(sorted({o for o, _, _ in wanted}), 900):
        for tid, o, f, h in conn.execute(select(texts.c.id, col, texts.c.field, texts.c.text_hash).where(col.in_(chunk))):
            have[(int(o), f)] = (int(tid), h)
    drop, rows = [], []
    for owner_id, fld, text in wanted:
        text = (text or "").strip()
        old = have.get((owner_id, fld))
        digest = text_hash(text) if text else None
        if old is not None and old[1] == digest:
            continue
        if old is not None:
            drop.append(old[0])
        if digest is not None:
            if digest not in vectors:
                raise StoreError(f"internal error: no vector for the {fld} {text[:40]!r}")
            rows.append({"collection_id": cid, owner: owner_id, "field": fld, "text": text, "text_hash": digest,
                         "vector": pack_vectors(vectors[digest][None])[0], "seq": seq})
    for chunk in chunks(drop, 900):
        conn.execute(delete(texts).where(texts.c.id.in_(chunk)))
    if rows:
        conn.execute(insert(texts), rows)


def forget_derived(conn: Connection, image_ids: Sequence[int]) -> None:
    """Drop what was derived from these images' old content: generated captions and tags."""
    for chunk in chunks(list(image_ids), 900):
        conn.execute(delete(texts).where(texts.c.image_id.in_(chunk), texts.c.field == "generated"))
        conn.execute(delete(tags).where(tags.c.image_id.in_(chunk)))


def tags_of(conn: Connection, ids: Sequence[int]) -> dict[int, list[str]]:
    """image id -> its zero-shot tags, most probable first."""
    out: dict[int, list[str]] = {}
    for chunk in chunks(list(ids), 900):
        for image_id, label in conn.execute(select(tags.c.image_id, tags.c.label).where(tags.c.image_id.in_(chunk))
                                            .order_by(tags.c.image_id, tags.c.score.desc())):
            out.setdefault(int(image_id), []).append(label)
    return out


def generated_of(conn: Connection, ids: Sequence[int]) -> dict[int, str]:
    """image id -> its searchable generated caption."""
    out: dict[int, str] = {}
    for chunk in chunks(list(ids), 900):
        for image_id, text in conn.execute(select(texts.c.image_id, texts.c.text).where(
                texts.c.image_id.in_(chunk), texts.c.field == "generated")):
            out[int(image_id)] = text
    return out


def write_errors(conn: Connection, collection_id: int, errors: Sequence[FileErrorRecord]) -> None:
    """Record each path's last error (one row per path)."""
    latest = {err.path: err for err in errors}
    if latest:
        conn.execute(insert_or(conn, file_errors, ["collection_id", "path"], ["size", "mtime", "error", "at"]),
                     [dict(collection_id=collection_id, path=e.path, size=e.size, mtime=e.mtime, error=e.error,
                           at=e.at) for e in latest.values()])


def clear_errors(conn: Connection, collection_id: int, paths: Sequence[str]) -> None:
    """Forget the errors of these paths (written now, or gone)."""
    for chunk in chunks(list(paths), 900):
        conn.execute(delete(file_errors).where(file_errors.c.collection_id == collection_id,
                                               file_errors.c.path.in_(chunk)))
