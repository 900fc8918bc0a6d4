"""Texts: captions and titles with vectors (image->text search), the cache of model-generated
text, the searchable generated captions, and zero-shot tags."""

from __future__ import annotations

import time
from typing import Iterable, Mapping, Sequence

import numpy as np
from sqlalchemy import delete, func, insert, select, update

from ..codec import unpack_vectors
from ..database import Repository, chunks, ids_in, insert_or
from ..documents import refresh_docs
from ..records import ImageRecord, TextRecord
from ..rows import IMAGE_COLS, collection_dim, next_seq, sync_texts
from ..schema import collections, generated, images, tags, texts

__all__ = ["TextsRepo"]


class TextsRepo(Repository):
    """The ``texts``, ``generated`` and ``tags`` tables."""

    def text_vectors_by_hash(self, collection_id: int, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """Stored vectors of texts already encoded, by :func:`~searchengine.hashing.text_hash` (each text is
        encoded once)."""
        out: dict[str, np.ndarray] = {}
        with self.db.connect() as conn:
            dim = collection_dim(conn, collection_id)
            for chunk in chunks(sorted(set(hashes)), 900):
                for h, blob in conn.execute(select(texts.c.text_hash, texts.c.vector).where(
                        texts.c.collection_id == collection_id, texts.c.text_hash.in_(chunk))):
                    out.setdefault(h, unpack_vectors([blob], dim)[0])
        return out

    def texts_by_ids(self, collection_id: int, ids: Iterable[int]) -> dict[int, TextRecord]:
        out: dict[int, TextRecord] = {}
        with self.db.connect() as conn:
            for chunk in chunks([int(i) for i in ids], 900):
                for r in conn.execute(select(texts.c.id, texts.c.field, texts.c.text, texts.c.image_id,
                                             texts.c.product_id).where(ids_in(texts, collection_id, chunk))):
                    out[int(r.id)] = TextRecord(**r._mapping)
        return out

    def count_texts(self, collection_id: int) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(texts)
                                    .where(texts.c.collection_id == collection_id)).scalar_one())

    # -- generated text and tags --------------------------------------------------------------
    def generated_texts(self, task: str, model: str, question: str, hashes: Iterable[str]) -> dict[str, str]:
        """Cached model outputs by content hash (see the ``generated`` table)."""
        out: dict[str, str] = {}
        with self.db.connect() as conn:
            for chunk in chunks(sorted(set(hashes)), 900):
                out.update(conn.execute(select(generated.c.content_hash, generated.c.text).where(
                    generated.c.task == task, generated.c.model == model, generated.c.question == question,
                    generated.c.content_hash.in_(chunk))).all())
        return out

    def put_generated(self, task: str, model: str, question: str, items: Mapping[str, str]) -> None:
        now = time.time()
        with self.db.begin() as conn:
            upsert = insert_or(conn, generated, ["content_hash", "task", "model", "question"], ["text", "created_at"])
            for chunk in chunks(sorted(items), 900):
                conn.execute(upsert, [dict(content_hash=h, task=task, model=model, question=question,
                                           text=items[h], created_at=now) for h in chunk])

    def set_caption_model(self, collection_id: int, model: str | None) -> None:
        """The model whose captions are the collection's searchable generated text; another model
        replaces them (they are generated again)."""
        with self.db.begin() as conn:
            old = conn.execute(select(collections.c.caption_model).where(collections.c.id == collection_id)).scalar()
            if old == model:
                return
            conn.execute(update(collections).where(collections.c.id == collection_id).values(caption_model=model))
            ids = [int(i) for i in conn.execute(select(texts.c.image_id).where(
                texts.c.collection_id == collection_id, texts.c.field == "generated")).scalars()]
            conn.execute(delete(texts).where(texts.c.collection_id == collection_id, texts.c.field == "generated"))
            refresh_docs(conn, ids)

    def images_without_generated(self, collection_id: int) -> list[ImageRecord]:
        """Images that have no searchable generated caption yet."""
        has = select(texts.c.image_id).where(texts.c.collection_id == collection_id, texts.c.field == "generated",
                                             texts.c.image_id.is_not(None))
        with self.db.connect() as conn:
            rows = conn.execute(select(*IMAGE_COLS).where(images.c.collection_id == collection_id,
                                                          images.c.id.not_in(has)).order_by(images.c.id))
            return [ImageRecord(**r._mapping) for r in rows]

    def write_generated(self, collection_id: int, captions: Mapping[int, str],
                        vectors: Mapping[str, np.ndarray]) -> None:
        """Make these generated captions searchable: text rows with vectors (``vectors`` by
        :func:`~searchengine.hashing.text_hash`), and the images' keyword documents."""
        with self.db.begin() as conn:
            seq = next_seq(conn, collection_id)
            live = set()
            for chunk in chunks(sorted(captions), 900):  # images removed meanwhile are skipped
                live |= {int(i) for i in conn.execute(select(images.c.id).where(images.c.id.in_(chunk))).scalars()}
            wanted = [(i, "generated", captions[i]) for i in sorted(live)]
            sync_texts(conn, collection_id, seq, "image_id", wanted, vectors)
            refresh_docs(conn, sorted(live))

    def replace_tags(self, collection_id: int, rows: Sequence[tuple[int, str, float]]) -> None:
        """Replace the collection's zero-shot tags with ``(image id, label, probability)`` rows."""
        with self.db.begin() as conn:
            old = [int(i) for i in conn.execute(select(tags.c.image_id).where(
                tags.c.collection_id == collection_id).distinct()).scalars()]
            conn.execute(delete(tags).where(tags.c.collection_id == collection_id))
            if rows:
                conn.execute(insert(tags), [dict(collection_id=collection_id, image_id=i, label=lab,
                                                 label_norm=lab.casefold().strip(), score=sc) for i, lab, sc in rows])
            refresh_docs(conn, sorted(set(old) | {i for i, _, _ in rows}))
