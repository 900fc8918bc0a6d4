"""Numbered, frozen schema migrations and the runner that applies them.

Each step declares the tables and columns it adds as they were when it was released, in its
own ``MetaData`` or as literal SQL: nothing here reads the current schema (:mod:`.schema`), so
editing that never rewrites history. ``MIGRATIONS[i]`` takes the schema from version ``i`` to
``i + 1``; a test checks that migrating a version 1 database ends in the current schema.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection

from ..errors import StoreError
from .database import Database
from .documents import refresh_docs
from .records import file_type, outermost
from .schema import schema_version

__all__ = [
    "MIGRATIONS", "SCHEMA_VERSION", "migrate", "current_version", "m001_initial", "m002_texts_and_catalogs",
    "m003_generated_and_tags", "m004_roots", "m005_index_checksums",
]

#: 64-bit keys and sizes as the migrations created them (INTEGER on SQLite: rowid ids).
_BIG = BigInteger().with_variant(Integer(), "sqlite")
#: The PostgreSQL advisory lock that one process at a time holds while it migrates the schema.
_SCHEMA_LOCK = 0x736561726368  # "search"


def _keys(meta: MetaData, **tables: object) -> None:
    """Declare just the primary keys of existing tables, for the foreign keys of new ones."""
    for name, key_type in tables.items():
        Table(name, meta, Column("id", key_type, primary_key=True))


def _add_columns(conn: Connection, table: str, columns: Sequence[Column]) -> None:
    """``ALTER TABLE ... ADD COLUMN`` each column, with its server default and nullability."""
    for col in columns:
        ddl = f"ALTER TABLE {table} ADD COLUMN {col.name} {col.type.compile(conn.dialect)}"
        if col.server_default is not None:
            ddl += f" DEFAULT '{col.server_default.arg}'" if isinstance(col.type, (String, Text)) \
                else f" DEFAULT {col.server_default.arg}"
        conn.exec_driver_sql(ddl + ("" if col.nullable else " NOT NULL"))


def m001_initial(conn: Connection) -> None:
    """Version 1: collections, images with their vectors, and per-file errors."""
    v1 = MetaData()
    Table("collections", v1,
          Column("id", Integer, primary_key=True),
          Column("name", String(64), nullable=False, unique=True),
          Column("model_spec", Text, nullable=False),
          Column("dim", Integer, nullable=False),
          Column("fingerprint", LargeBinary, nullable=False),
          Column("fingerprint_id", String(32), nullable=False),
          Column("index_factory", Text, nullable=False),
          Column("index_note", Text, nullable=False),
          Column("next_seq", _BIG, nullable=False),
          Column("index_seq", _BIG, nullable=False),
          Column("created_at", Float, nullable=False))
    Table("images", v1,
          Column("id", _BIG, primary_key=True),
          Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
          Column("path", Text, nullable=False),
          Column("size", _BIG, nullable=False),
          Column("mtime", Float, nullable=False),
          Column("content_hash", String(64), nullable=False),
          Column("width", Integer, nullable=False),
          Column("height", Integer, nullable=False),
          Column("vector", LargeBinary, nullable=False),
          Column("seq", _BIG, nullable=False),
          Column("indexed_at", Float, nullable=False),
          UniqueConstraint("collection_id", "path", name="uq_images_path"),
          Index("ix_images_hash", "collection_id", "content_hash"),
          Index("ix_images_seq", "collection_id", "seq"))
    Table("file_errors", v1,
          Column("id", _BIG, primary_key=True),
          Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
          Column("path", Text, nullable=False),
          Column("size", _BIG, nullable=False),
          Column("mtime", Float, nullable=False),
          Column("error", Text, nullable=False),
          Column("at", Float, nullable=False),
          UniqueConstraint("collection_id", "path", name="uq_errors_path"))
    v1.create_all(conn)


def m002_texts_and_catalogs(conn: Connection) -> None:
    """Version 2: captions, dates and text in images; catalogs (products, attributes); texts with
    vectors; keyword documents, built for the existing images."""
    _add_columns(conn, "collections", [Column("text_index_seq", _BIG, nullable=False, server_default="0"),
                                       Column("ocr", Integer, nullable=False, server_default="0")])
    _add_columns(conn, "images", [
        Column("ext", String(16), nullable=False, server_default=""),
        Column("source", String(16), nullable=False, server_default="folder"),
        Column("caption", Text),
        Column("taken_at", String(19)),
        Column("ocr_text", Text),
        Column("sidecar_sig", Text, nullable=False, server_default=""),
    ])
    for image_id, path in conn.execute(text("SELECT id, path FROM images")).all():
        conn.execute(text("UPDATE images SET ext = :ext WHERE id = :id"), {"ext": file_type(path), "id": image_id})
    _m002_tables(conn)
    _m002_documents(conn)
    refresh_docs(conn, [int(i) for i in conn.execute(text("SELECT id FROM images")).scalars()], derived=False)


def _m002_tables(conn: Connection) -> None:
    v2 = MetaData()
    _keys(v2, collections=Integer, images=_BIG)
    new = [
        Table("products", v2,
              Column("id", _BIG, primary_key=True),
              Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
              Column("product_key", Text, nullable=False),
              Column("title", Text),
              Column("description", Text),
              Column("caption", Text),
              Column("catalog", Text, nullable=False),
              Column("fingerprint", String(32), nullable=False),
              Column("updated_at", Float, nullable=False),
              UniqueConstraint("collection_id", "product_key", name="uq_products_key"),
              Index("ix_products_catalog", "collection_id", "catalog")),
        Table("product_images", v2,
              Column("product_id", _BIG, ForeignKey("products.id", ondelete="CASCADE"), primary_key=True),
              Column("position", Integer, primary_key=True, autoincrement=False),
              Column("ref", Text, nullable=False),
              Column("image_id", _BIG, ForeignKey("images.id", ondelete="SET NULL")),
              Index("ix_product_images_image", "image_id")),
        Table("attributes", v2,
              Column("id", _BIG, primary_key=True),
              Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
              Column("image_id", _BIG, ForeignKey("images.id", ondelete="CASCADE")),
              Column("product_id", _BIG, ForeignKey("products.id", ondelete="CASCADE")),
              Column("key", Text, nullable=False),
              Column("value", Text, nullable=False),
              Column("value_norm", Text, nullable=False),
              Column("value_num", Float),
              Index("ix_attributes_text", "collection_id", "key", "value_norm"),
              Index("ix_attributes_num", "collection_id", "key", "value_num"),
              Index("ix_attributes_image", "image_id"),
              Index("ix_attributes_product", "product_id")),
        Table("texts", v2,
              Column("id", _BIG, primary_key=True),
              Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
              Column("image_id", _BIG, ForeignKey("images.id", ondelete="CASCADE")),
              Column("product_id", _BIG, ForeignKey("products.id", ondelete="CASCADE")),
              Column("field", String(16), nullable=False),
              Column("text", Text, nullable=False),
              Column("text_hash", String(32), nullable=False),
              Column("vector", LargeBinary, nullable=False),
              Column("seq", _BIG, nullable=False),
              Index("ix_texts_seq", "collection_id", "seq"),
              Index("ix_texts_hash", "collection_id", "text_hash"),
              Index("ix_texts_image", "image_id"),
              Index("ix_texts_product", "product_id")),
    ]
    v2.create_all(conn, tables=new)


def _m002_documents(conn: Connection) -> None:
    """The keyword documents: an FTS5 table on SQLite, a weighted tsvector on PostgreSQL."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("CREATE VIRTUAL TABLE docs_fts USING fts5(collection_id UNINDEXED, name, title, caption, "
                             "description, attrs, ocr, tokenize = 'unicode61 remove_diacritics 2')")
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "CREATE TABLE docs (image_id BIGINT PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE, "
            "collection_id INTEGER NOT NULL, name TEXT, title TEXT, caption TEXT, description TEXT, attrs TEXT, "
            "ocr TEXT, tsv tsvector GENERATED ALWAYS AS ("
            "setweight(to_tsvector('simple', coalesce(title, '')), 'A') || "
            "setweight(to_tsvector('simple', coalesce(caption, '')), 'B') || "
            "setweight(to_tsvector('simple', coalesce(attrs, '')), 'B') || "
            "setweight(to_tsvector('simple', coalesce(ocr, '')), 'C') || "
            "setweight(to_tsvector('simple', coalesce(name, '')), 'D') || "
            "setweight(to_tsvector('simple', coalesce(description, '')), 'D')) STORED)")
        conn.exec_driver_sql("CREATE INDEX ix_docs_tsv ON docs USING GIN (tsv)")


def m003_generated_and_tags(conn: Connection) -> None:
    """Version 3: the cache of model-generated text, the caption model, zero-shot tags."""
    _add_columns(conn, "collections", [Column("caption_model", Text)])
    v3 = MetaData()
    _keys(v3, collections=Integer, images=_BIG)
    new = [
        Table("generated", v3,
              Column("id", _BIG, primary_key=True),
              Column("content_hash", String(64), nullable=False),
              Column("task", String(16), nullable=False),
              Column("model", Text, nullable=False),
              Column("question", Text, nullable=False),
              Column("text", Text, nullable=False),
              Column("created_at", Float, nullable=False),
              UniqueConstraint("content_hash", "task", "model", "question", name="uq_generated")),
        Table("tags", v3,
              Column("id", _BIG, primary_key=True),
              Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
              Column("image_id", _BIG, ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
              Column("label", Text, nullable=False),
              Column("label_norm", Text, nullable=False),
              Column("score", Float, nullable=False),
              Index("ix_tags_label", "collection_id", "label_norm"),
              Index("ix_tags_image", "image_id")),
    ]
    v3.create_all(conn, tables=new)


def m004_roots(conn: Connection) -> None:
    """Version 4: the folders a collection's files come from. Existing collections get their
    images' folders (inside the roots they were indexed from)."""
    v4 = MetaData()
    _keys(v4, collections=Integer)
    roots = Table("roots", v4,
                  Column("id", _BIG, primary_key=True),
                  Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
                  Column("path", Text, nullable=False),
                  Column("added_at", Float, nullable=False),
                  UniqueConstraint("collection_id", "path", name="uq_roots_path"))
    v4.create_all(conn, tables=[roots])
    by_collection: dict[int, set[str]] = {}
    for cid, path in conn.execute(text("SELECT collection_id, path FROM images")).all():
        by_collection.setdefault(int(cid), set()).add(os.path.dirname(path))
    now = time.time()
    for cid, folders in by_collection.items():
        conn.execute(insert(roots), [dict(collection_id=cid, path=p, added_at=now) for p in outermost(folders)])


def m005_index_checksums(conn: Connection) -> None:
    """Version 5: a SHA-256 of each index file as written, checked before the file is read again.
    Index files written before have none: they are trusted once and get one on their next save."""
    _add_columns(conn, "collections", [Column("index_checksum", Text), Column("text_index_checksum", Text)])


#: Numbered migrations: ``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``.
MIGRATIONS: list[Callable[[Connection], None]] = [m001_initial, m002_texts_and_catalogs, m003_generated_and_tags,
                                                  m004_roots, m005_index_checksums]
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(conn: Connection) -> int:
    """The schema version of the database (0: none applied yet)."""
    return int(conn.execute(select(func.max(schema_version.c.version))).scalar() or 0)


def _lock_schema(conn: Connection) -> None:
    """Migrate one process at a time: another one that opened the store meanwhile waits, then
    finds the schema current (without the lock both would create the same tables)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
    elif conn.dialect.name == "sqlite":
        # sqlite3 begins a transaction only before its first INSERT/UPDATE/DELETE, so migrations'
        # CREATE/ALTER statements ran outside it; an immediate transaction holds them and the write lock
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def migrate(engine: Database, target: int = SCHEMA_VERSION) -> None:
    """Bring the database to schema version ``target`` (the latest by default), in one transaction;
    a schema newer than this code is refused."""
    with engine.connect() as conn:
        if inspect(conn).has_table("schema_version") and current_version(conn) == target:
            return  # the usual case: no lock, no write (a read-only database opens)
    with engine.begin() as conn:
        _lock_schema(conn)
        schema_version.create(conn, checkfirst=True)
        current = current_version(conn)
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the store's schema version {current} is newer than this engine's ({SCHEMA_VERSION}); upgrade searchengine"
            )
        for version in range(current, target):
            MIGRATIONS[version](conn)
            conn.execute(insert(schema_version).values(version=version + 1))
