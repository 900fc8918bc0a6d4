"""What the store reads and writes: the record dataclasses, and how values are normalised
(file types, numbers, attribute text)."""

from __future__ import annotations

import math
import os
from dataclasses import KW_ONLY, dataclass, field
from typing import Iterable, Literal, Mapping, Sequence

__all__ = [
    "Attributes", "VectorKind", "CollectionRecord", "NewImage", "ImageRecord", "FileErrorRecord", "ProductWrite",
    "ProductRecord", "TextRecord", "file_type", "number", "value_text", "outermost",
]

#: Multi-valued attributes: key -> values (strings, or numbers as floats).
Attributes = Mapping[str, Sequence["str | float"]]
#: Which rows' vectors: the images' (image index) or the captions' and titles' (text index).
VectorKind = Literal["images", "texts"]


@dataclass(frozen=True)
class CollectionRecord:
    id: int
    name: str
    model_spec: str
    dim: int
    fingerprint: bytes
    fingerprint_id: str
    index_factory: str
    index_note: str
    next_seq: int
    index_seq: int
    created_at: float
    text_index_seq: int = 0
    ocr: int = 0
    caption_model: str | None = None
    index_checksum: str | None = None
    text_index_checksum: str | None = None


@dataclass(frozen=True)
class NewImage:
    """An image file as the writer stores it, with what was read next to and inside it."""

    path: str
    size: int
    mtime: float
    content_hash: str
    width: int
    height: int
    _: KW_ONLY
    caption: str | None = None
    taken_at: str | None = None
    ocr_text: str | None = None
    sidecar_sig: str = ""
    source: str = "folder"
    #: replaces the image's own attributes (a catalog product's attributes live on the product)
    attributes: Attributes = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ImageRecord(NewImage):
    """A stored image row (``attributes`` are not loaded: see :meth:`Store.attributes_of_images`)."""

    id: int
    indexed_at: float


@dataclass(frozen=True)
class FileErrorRecord:
    path: str
    error: str
    size: int
    mtime: float
    at: float


@dataclass(frozen=True)
class ProductWrite:
    """A catalog product as the importer stores it."""

    key: str
    title: str | None
    description: str | None
    caption: str | None
    attributes: Attributes
    fingerprint: str
    catalog: str
    #: (position, the catalog's reference, the image row or None when it could not be fetched/decoded)
    images: Sequence[tuple[int, str, int | None]]


@dataclass(frozen=True)
class ProductRecord:
    id: int
    key: str
    title: str | None
    description: str | None
    caption: str | None
    catalog: str
    fingerprint: str
    attributes: dict[str, list[str]] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)  # the paths of its indexed images, in catalog order


@dataclass(frozen=True)
class TextRecord:
    """A caption or title with a vector: what image->text search returns."""

    id: int
    field: str
    text: str
    image_id: int | None
    product_id: int | None


def file_type(path: str) -> str:
    """What the ``type`` filter compares: the lowercased extension without its dot (jpeg -> jpg)."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return {"jpeg": "jpg", "tiff": "tif", "heif": "heic"}.get(ext, ext)[:16]


def number(value: object) -> float | None:
    """A value as a number when it reads as one (finite), else None."""
    if isinstance(value, bool):
        return None
    try:
        num = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return num if math.isfinite(num) else None


def value_text(value: object) -> str:
    """How an attribute value is stored and shown: numbers without a needless ``.0``."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def outermost(paths: Iterable[str]) -> list[str]:
    """The paths that are not below another of them, sorted (how a collection's roots are kept)."""
    out = sorted(set(paths))
    return [p for p in out if not any(p != o and p.startswith(o.rstrip("/") + "/") for o in out)]
