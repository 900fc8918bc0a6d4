"""Thumbnails and originals, by image id only.

Both read the file only when its resolved real path lies inside one of the collection's roots
(the folders it was indexed from, a catalog's download cache and image folders). Thumbnails are
decoded with the indexer's limits, written once per content and size (atomically), and served
as JPEG. Originals are served with a type sniffed from their bytes, never SVG, with
``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .._fs import AtomicFile
from ..engine import SearchEngine
from ..errors import ImageDecodeError, NotFoundError
from ..imaging import safe_open
from ..store import ImageRecord
from .security import contained_file

__all__ = ["thumbnail_file", "original_file", "SERVED_TYPES"]

#: Pillow format -> the MIME type an original is served with; anything else is refused.
SERVED_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
                "BMP": "image/bmp", "TIFF": "image/tiff"}


def _located(engine: SearchEngine, image_id: int) -> tuple[ImageRecord, str]:
    """The image's row and its file's resolved real path, which must lie inside a root."""
    rec = engine.records([image_id]).get(image_id)
    if rec is None:
        raise NotFoundError(f"no image with id {image_id} in collection {engine.collection.name!r}")
    real = contained_file(rec.path, engine.roots())
    if real is None:
        raise NotFoundError(f"image {image_id} is not readable inside the collection's folders")
    return rec, real


def thumbnail_file(engine: SearchEngine, image_id: int, size: int) -> Path:
    """The cached JPEG thumbnail (longest side ``size``) of an image, made on first request."""
    rec, real = _located(engine, image_id)
    folder = engine.settings.collection_dir / "thumbs" / rec.content_hash[:2]
    target = folder / f"{rec.content_hash}-{size}.jpg"
    if target.is_file():
        return target
    image = safe_open(real, max_pixels=engine.settings.max_pixels, draft_size=size)
    image.thumbnail((size, size))
    with AtomicFile(target, durable=False) as out:  # a cache: atomic, not fsynced
        image.save(out.file, "JPEG", quality=85, optimize=True)
    return target


def original_file(engine: SearchEngine, image_id: int) -> tuple[str, str]:
    """(resolved path, MIME type) of an image's original file."""
    _, real = _located(engine, image_id)
    if real.lower().endswith((".svg", ".svgz")):
        raise NotFoundError(f"image {image_id} is not of a type served as an original")
    try:
        with Image.open(real) as im:  # the header only: the type comes from the bytes, not the name
            kind = SERVED_TYPES.get(im.format or "")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"image {image_id} cannot be read: {exc}") from exc
    if kind is None:
        raise NotFoundError(f"image {image_id} is not of a type served as an original")
    return real, kind
