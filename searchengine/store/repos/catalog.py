"""Catalogs: products, their image links and attributes, and the attribute facets of a collection."""

from __future__ import annotations

import time
from typing import Iterable, Mapping, Sequence

import numpy as np
from sqlalchemy import delete, func, insert, literal, select
from sqlalchemy.engine import Connection

from ..database import Repository, chunks, ids_in, insert_or
from ..documents import refresh_docs
from ..records import FileErrorRecord, ProductRecord, ProductWrite
from ..rows import attributes_of, clear_errors, insert_attributes, next_seq, sync_texts, tags_of, write_errors
from ..schema import attributes, images, product_images, products, tags

__all__ = ["CatalogRepo"]

_PRODUCT_COLUMNS = ["title", "description", "caption", "catalog", "fingerprint", "updated_at"]


class CatalogRepo(Repository):
    """The ``products``, ``product_images`` and ``attributes`` tables."""

    def product_refs(self, collection_id: int, catalog: str | None = None) -> set[str]:
        """The image references (URLs, paths) of the collection's products, or of one catalog's."""
        query = (select(product_images.c.ref)
                 .join(products, products.c.id == product_images.c.product_id)
                 .where(products.c.collection_id == collection_id))
        if catalog is not None:
            query = query.where(products.c.catalog == catalog)
        with self.db.connect() as conn:
            return set(conn.execute(query).scalars())

    def catalog_products(self, collection_id: int, catalog: str) -> dict[str, tuple[int, str]]:
        """key -> (id, fingerprint) of the products imported from ``catalog``."""
        with self.db.connect() as conn:
            rows = conn.execute(select(products.c.product_key, products.c.id, products.c.fingerprint).where(
                products.c.collection_id == collection_id, products.c.catalog == catalog))
            return {k: (int(i), f) for k, i, f in rows}

    def write_products(self, collection_id: int, upserts: Sequence[ProductWrite], *, removed: Sequence[int] = (),
                       text_vectors: Mapping[str, np.ndarray] | None = None, errors: Sequence[FileErrorRecord] = (),
                       cleared_errors: Sequence[str] = ()) -> list[int]:
        """Insert or update products by key and delete ``removed`` ones, in one transaction; returns the ids."""
        with self.db.begin() as conn:
            seq = next_seq(conn, collection_id)
            upsert = insert_or(conn, products, ["collection_id", "product_key"], _PRODUCT_COLUMNS).returning(products.c.id)
            ids = [int(conn.execute(upsert, dict(
                collection_id=collection_id, product_key=p.key, title=p.title, description=p.description,
                caption=p.caption, catalog=p.catalog, fingerprint=p.fingerprint, updated_at=time.time())).scalar_one())
                for p in upserts]  # by key: each row is now locked by this transaction
            affected = set(_linked_images(conn, ids + list(removed)))  # images whose documents change
            affected.update(_replace_links(conn, ids, upserts))
            insert_attributes(conn, collection_id, [("product_id", pid, p.attributes) for pid, p in zip(ids, upserts)])
            fields = [(pid, f, getattr(p, f)) for pid, p in zip(ids, upserts) for f in ("title", "caption")]
            sync_texts(conn, collection_id, seq, "product_id", fields, text_vectors or {})
            for chunk in chunks(list(removed), 900):
                conn.execute(delete(products).where(ids_in(products, collection_id, chunk)))
            clear_errors(conn, collection_id, cleared_errors)
            write_errors(conn, collection_id, errors)
            refresh_docs(conn, sorted(affected))
        return ids

    def unlinked_catalog_images(self, collection_id: int) -> list[int]:
        """Images a catalog brought in that no product uses any more."""
        linked = select(product_images.c.image_id).where(product_images.c.image_id.is_not(None))
        with self.db.connect() as conn:
            return [int(i) for i in conn.execute(select(images.c.id).where(
                images.c.collection_id == collection_id, images.c.source == "catalog", images.c.id.not_in(linked)))
                .scalars()]

    def count_products(self, collection_id: int) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(products)
                                    .where(products.c.collection_id == collection_id)).scalar_one())

    def products_of_images(self, collection_id: int, image_ids: Iterable[int]) -> dict[int, list[ProductRecord]]:
        """The products each image belongs to (with attributes and image paths)."""
        id_list = [int(i) for i in image_ids]
        links: dict[int, list[int]] = {}
        with self.db.connect() as conn:
            for chunk in chunks(id_list, 900):
                for image_id, pid in conn.execute(select(product_images.c.image_id, product_images.c.product_id)
                                                  .where(product_images.c.image_id.in_(chunk))):
                    links.setdefault(int(image_id), []).append(int(pid))
        found = self.products_by_ids(collection_id, {p for ps in links.values() for p in ps})
        return {i: [found[p] for p in sorted(ps) if p in found] for i, ps in links.items()}

    def products_by_ids(self, collection_id: int, ids: Iterable[int]) -> dict[int, ProductRecord]:
        id_list = [int(i) for i in ids]
        out: dict[int, ProductRecord] = {}
        with self.db.connect() as conn:
            for chunk in chunks(id_list, 900):
                rows = conn.execute(select(products).where(ids_in(products, collection_id, chunk))).mappings().all()
                attrs = attributes_of(conn, "product_id", chunk)
                paths: dict[int, list[str]] = {}
                for pid, path in conn.execute(
                        select(product_images.c.product_id, images.c.path)
                        .join(images, images.c.id == product_images.c.image_id)
                        .where(product_images.c.product_id.in_(chunk)).order_by(product_images.c.position)):
                    paths.setdefault(int(pid), []).append(path)
                for r in rows:
                    out[int(r["id"])] = ProductRecord(
                        id=int(r["id"]), key=r["product_key"], title=r["title"], description=r["description"],
                        caption=r["caption"], catalog=r["catalog"], fingerprint=r["fingerprint"],
                        attributes=attrs.get(int(r["id"]), {}), images=paths.get(int(r["id"]), []))
        return out

    def attributes_of_images(self, image_ids: Iterable[int]) -> dict[int, dict[str, list[str]]]:
        """The images' own attributes, with their zero-shot tags under ``tag``."""
        ids = [int(i) for i in image_ids]
        with self.db.connect() as conn:
            out = attributes_of(conn, "image_id", ids)
            for image_id, labels in tags_of(conn, ids).items():
                have = out.setdefault(image_id, {}).setdefault("tag", [])
                have += [t for t in labels if t not in have]
        return out

    def facets(self, collection_id: int, per_key: int = 50) -> dict[str, list[tuple[str, int]]]:
        """Each attribute (and ``tag``) with its most frequent values and their row counts, for filter menus."""
        key_col, value_col = attributes.c.key, func.min(attributes.c.value)
        counted = [select(key_col.label("k"), value_col.label("v"), func.count().label("n"))
                   .where(attributes.c.collection_id == collection_id)
                   .group_by(attributes.c.key, attributes.c.value_norm),
                   select(literal("tag").label("k"), func.min(tags.c.label).label("v"), func.count().label("n"))
                   .where(tags.c.collection_id == collection_id).group_by(tags.c.label_norm)]
        out: dict[str, dict[str, list]] = {}
        with self.db.connect() as conn:
            for query in counted:
                for k, v, n in conn.execute(query):
                    entry = out.setdefault(str(k), {}).setdefault(str(v).casefold(), [str(v), 0])
                    entry[1] += int(n)
        return {k: sorted(((v, n) for v, n in vs.values()), key=lambda x: (-x[1], x[0]))[:per_key]
                for k, vs in sorted(out.items())}

    def image_links(self, collection_id: int, catalog: str) -> dict[str, int]:
        """ref -> image id of the images the products of ``catalog`` use."""
        with self.db.connect() as conn:
            rows = conn.execute(select(product_images.c.ref, product_images.c.image_id)
                                .join(products, products.c.id == product_images.c.product_id)
                                .where(products.c.collection_id == collection_id, products.c.catalog == catalog,
                                       product_images.c.image_id.is_not(None)))
            return {ref: int(i) for ref, i in rows}


def _linked_images(conn: Connection, product_ids: Sequence[int]) -> list[int]:
    out: list[int] = []
    for chunk in chunks(list(product_ids), 900):
        out += [int(i) for i in conn.execute(select(product_images.c.image_id).where(
            product_images.c.product_id.in_(chunk), product_images.c.image_id.is_not(None))).scalars()]
    return out


def _replace_links(conn: Connection, ids: Sequence[int], upserts: Sequence[ProductWrite]) -> set[int]:
    """Replace the written products' image links and attributes (attributes are added back by the
    caller); the images they link to now."""
    for chunk in chunks(list(ids), 900):
        conn.execute(delete(product_images).where(product_images.c.product_id.in_(chunk)))
        conn.execute(delete(attributes).where(attributes.c.product_id.in_(chunk)))
    links = [dict(product_id=pid, position=pos, ref=ref, image_id=img)
             for pid, p in zip(ids, upserts) for pos, ref, img in p.images]
    if links:
        conn.execute(insert(product_images), links)
    return {link["image_id"] for link in links if link["image_id"] is not None}
