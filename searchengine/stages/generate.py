"""Captions and answers, cached in the store per (image content, task, model, question): an unchanged
image is never run through the same model twice. Also captioning a whole collection (``index --caption``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from PIL import Image

from ..errors import QueryError
from ..hashing import content_hash, text_hash
from ..imaging import safe_open

if TYPE_CHECKING:  # pragma: no cover
    from ..models.clip import ClipEncoder
    from ..store import Store

__all__ = ["image_key", "generate_cached", "caption_images"]


def image_key(image: Any) -> str:
    """The content hash of an image given as a path, bytes or a PIL image."""
    if isinstance(image, Image.Image):
        return content_hash(f"{image.mode}{image.size}".encode() + image.tobytes())
    if isinstance(image, (bytes, bytearray)):
        return content_hash(bytes(image))
    try:
        return content_hash(Path(image).read_bytes())
    except OSError as exc:
        raise QueryError(f"cannot read the image {image}: {exc.strerror or exc}") from exc


def generate_cached(store: "Store | None", task: str, model: str, question: str, images: Sequence[Any],
                    run: Callable[[list[Any]], list[str]], keys: Sequence[str] | None = None) -> list[str]:
    """One output per image: from the store's cache, else from ``run`` (called once, on the
    missing images only, and its outputs stored)."""
    keys = list(keys) if keys is not None else [image_key(im) for im in images]
    known = store.generated_texts(task, model, question, keys) if store is not None else {}
    missing = list(dict.fromkeys(k for k in keys if k not in known))
    if missing:
        first = {k: images[keys.index(k)] for k in missing}
        made = dict(zip(missing, run([_readable(first[k]) for k in missing])))
        if store is not None:
            store.put_generated(task, model, question, made)
        known = {**known, **made}
    return [known[k] for k in keys]


def _readable(image: Any) -> Any:
    """Bytes become a PIL image; paths and PIL images pass."""
    if isinstance(image, (bytes, bytearray)):
        return safe_open(io.BytesIO(bytes(image)))
    return image


def caption_images(store: "Store", collection_id: int, captioner: Any, encoder: "ClipEncoder",
                   progress: Callable[[int], None] | None = None, chunk: int = 64) -> int:
    """Caption the collection's images that have no searchable generated caption, storing each caption
    with its ``encoder`` vector; returns how many. The caller then syncs its text index."""
    store.set_caption_model(collection_id, captioner.spec)
    todo = store.images_without_generated(collection_id)
    done = 0
    for start in range(0, len(todo), chunk):
        rows = todo[start : start + chunk]
        texts = generate_cached(store, "caption", captioner.spec, "", [r.path for r in rows],
                                lambda images: captioner.generate(images), keys=[r.content_hash for r in rows])
        captions = {r.id: t for r, t in zip(rows, texts) if t.strip()}
        unique = sorted(set(captions.values()))
        vectors = dict(zip([text_hash(t) for t in unique], encoder.encode_texts(unique))) if unique else {}
        store.write_generated(collection_id, captions, vectors)
        done += len(rows)
        if progress is not None:
            progress(len(rows))
    return done
