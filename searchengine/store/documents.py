"""The keyword documents' builder: each image's words gathered from its row, attributes, tags,
generated caption and products, written through :mod:`.keywords` in the writer's transaction."""

from __future__ import annotations

import os
import re
from typing import Sequence

from sqlalchemy import select
from sqlalchemy.engine import Connection

from . import keywords
from .database import chunks
from .rows import attributes_of, generated_of, tags_of
from .schema import images, product_images, products

__all__ = ["refresh_docs"]


def refresh_docs(conn: Connection, image_ids: Sequence[int], derived: bool = True) -> None:
    """Rebuild the keyword documents of these images from their rows, attributes and products, and
    (``derived``; their tables exist from schema version 3) their tags and generated captions."""
    for chunk in chunks(sorted(set(image_ids)), 500):
        rows = conn.execute(select(images.c.id, images.c.collection_id, images.c.path, images.c.caption,
                                   images.c.ocr_text).where(images.c.id.in_(chunk))).all()
        words = _words(conn, chunk, derived)
        docs = []
        for image_id, cid, path, caption, ocr in rows:
            w = words[int(image_id)]
            name = re.sub(r"[_\-.]+", " ", os.path.splitext(os.path.basename(path))[0])
            docs.append(keywords.Doc(int(image_id), int(cid), name=name, title=" ".join(w["title"]),
                                     caption=" ".join([caption or "", *w["caption"]]).strip(),
                                     description=" ".join(w["description"]), attrs=" ".join(w["attrs"]), ocr=ocr or ""))
        keywords.remove(conn, [i for i in chunk if i not in {d.image_id for d in docs}])
        keywords.replace(conn, docs)


def _words(conn: Connection, chunk: list[int], derived: bool) -> dict[int, dict[str, list[str]]]:
    """image id -> document field -> the words from elsewhere than the image row."""
    words: dict[int, dict[str, list[str]]] = {i: {"title": [], "description": [], "caption": [], "attrs": []}
                                              for i in chunk}
    for image_id, values in attributes_of(conn, "image_id", chunk).items():
        words[image_id]["attrs"] += [v for vs in values.values() for v in vs]
    for image_id, labels in (tags_of(conn, chunk) if derived else {}).items():
        words[image_id]["attrs"] += labels
    for image_id, text in (generated_of(conn, chunk) if derived else {}).items():
        words[image_id]["caption"].append(text)
    links = conn.execute(select(product_images.c.image_id, products.c.id, products.c.title,
                                products.c.description, products.c.caption)
                         .join(products, products.c.id == product_images.c.product_id)
                         .where(product_images.c.image_id.in_(chunk))).all()
    product_attrs = attributes_of(conn, "product_id", sorted({int(r[1]) for r in links}))
    for image_id, pid, title, description, caption in links:
        w = words[int(image_id)]
        w["title"].append(title or "")
        w["description"].append(description or "")
        w["caption"].append(caption or "")
        w["attrs"] += [v for vs in product_attrs.get(int(pid), {}).values() for v in vs]
    return words
