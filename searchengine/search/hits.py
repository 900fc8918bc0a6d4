"""Search results: the hit records, their hydration through the store (deleted ids never leak),
grouping by product, near-duplicate collapsing and date order."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..store import ImageRecord, ProductRecord, Store

__all__ = ["Hit", "TextHit", "hydrate", "dedup", "by_date"]


@dataclass(frozen=True)
class Hit:
    """One search result, joined through the store: an image, or a product with its best image."""

    id: int  # the image's id
    path: str  # the matched image
    score: float
    width: int
    height: int
    size: int
    mtime: float
    caption: str | None = None
    taken_at: str | None = None  # EXIF DateTimeOriginal, ISO 8601
    text: str | None = None  # the text read inside the image (OCR)
    #: the image's own attributes, and its product's (filters and keyword search see both)
    attributes: dict[str, list[str]] = field(default_factory=dict)
    product_id: str | None = None  # the catalog's product id
    title: str | None = None
    description: str | None = None
    images: list[str] = field(default_factory=list)  # a product's images, in catalog order
    #: after reranking, ``score`` is the reranker's match probability and this the first stage's score
    first_score: float | None = None
    generated_caption: str | None = None  # search(..., caption=True)
    answer: str | None = None  # search(..., ask="question")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, rec: ImageRecord, score: float, attributes: dict | None = None,
                    product: ProductRecord | None = None) -> "Hit":
        attrs = {key: list(values) for key, values in (attributes or {}).items()}  # never share the lists
        extra: dict[str, Any] = {}
        if product is not None:
            for key, values in product.attributes.items():
                attrs.setdefault(key, []).extend(v for v in values if v not in attrs.get(key, []))
            extra = dict(product_id=product.key, title=product.title, description=product.description,
                         images=list(product.images))
        return cls(id=rec.id, path=rec.path, score=score, width=rec.width, height=rec.height, size=rec.size,
                   mtime=rec.mtime, caption=rec.caption or (product.caption if product else None),
                   taken_at=rec.taken_at, text=rec.ocr_text or None, attributes=attrs, **extra)


@dataclass(frozen=True)
class TextHit:
    """A caption or product title found by image->text or text->text search."""

    id: int
    score: float
    text: str
    field: str  # "caption" or "title"
    image_id: int | None = None
    path: str | None = None  # the image a caption belongs to
    product_id: str | None = None  # the product a title or caption belongs to

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hydrate(store: Store, collection_id: int, ranked: list[tuple[int, float]], group: bool) -> list[Hit]:
    """Join ranked ids through the store; with ``group``, one hit per product (its best image).
    Ids removed since the index was loaded drop out."""
    rows = store.images_by_ids(collection_id, [i for i, _ in ranked])
    ranked = [(i, sc) for i, sc in ranked if i in rows]
    attrs = store.attributes_of_images(rows)
    owners = store.products_of_images(collection_id, rows)
    hits: list[Hit] = []
    seen: set[int] = set()
    for image_id, score in ranked:
        products = owners.get(image_id) or [None]
        for product in products if group else products[:1]:
            if group and product is not None:
                if product.id in seen:
                    continue
                seen.add(product.id)
            hits.append(Hit.from_record(rows[image_id], score, attrs.get(image_id), product))
            if not group:
                break
    return hits


def dedup(store: Store, collection_id: int, hits: list[Hit], threshold: float) -> list[Hit]:
    """Drop each hit whose image is a near-duplicate (cosine >= threshold) of a better one."""
    if len(hits) < 2:
        return hits
    found, vecs = store.live_vectors(collection_id, [h.id for h in hits])
    stored = set(found.tolist())
    hits = [h for h in hits if h.id in stored]  # a writer may have removed the others meanwhile
    kept: list[int] = []
    for i in range(len(hits)):
        if not kept or float(np.max(vecs[kept] @ vecs[i])) < threshold - 1e-3:
            kept.append(i)
    return [hits[i] for i in kept]


def by_date(hits: list[Hit]) -> list[Hit]:
    """Newest first by EXIF date, undated last (in their order)."""
    return sorted((h for h in hits if h.taken_at), key=lambda h: h.taken_at or "", reverse=True) + [
        h for h in hits if not h.taken_at]
