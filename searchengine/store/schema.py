"""The current schema, declared plainly: every table as the latest migration leaves it.

Migrations (:mod:`.migrations`) never read these declarations: a change here needs a new
migration, and ``tests/store/test_migrations.py`` checks that migrating a version 1 database
ends in exactly this schema (with the keyword documents of :mod:`.keywords`).
"""

from __future__ import annotations

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
    text,
)
from sqlalchemy.engine import Connection

from . import keywords

__all__ = [
    "metadata", "BigInt", "schema_version", "collections", "images", "file_errors", "products", "product_images",
    "attributes", "texts", "generated", "tags", "roots", "VECTOR_TABLES", "create_all",
]

metadata = MetaData()
#: 64-bit keys and sizes on every database; on SQLite "INTEGER PRIMARY KEY" (already 64-bit) keeps rowid ids.
BigInt = BigInteger().with_variant(Integer(), "sqlite")

#: One row per migration applied (the schema's version is the highest).
schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

collections = Table(
    "collections", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("model_spec", Text, nullable=False),
    Column("dim", Integer, nullable=False),
    Column("fingerprint", LargeBinary, nullable=False),
    Column("fingerprint_id", String(32), nullable=False),
    Column("index_factory", Text, nullable=False),
    Column("index_note", Text, nullable=False, default=""),
    Column("next_seq", BigInt, nullable=False, default=1),
    Column("index_seq", BigInt, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    # numeric defaults as migration 2 added them (DEFAULT 0, not the string '0')
    Column("text_index_seq", BigInt, nullable=False, server_default=text("0")),
    Column("ocr", Integer, nullable=False, server_default=text("0")),  # 1: read the text in images at ingest
    Column("caption_model", Text),  # the model whose generated captions are searchable text
    Column("index_checksum", Text),  # SHA-256 of each index file as written, checked before it is read again
    Column("text_index_checksum", Text),
)

images = Table(
    "images", metadata,
    Column("id", BigInt, primary_key=True),
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
    Column("path", Text, nullable=False),
    Column("size", BigInt, nullable=False),
    Column("mtime", Float, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("vector", LargeBinary, nullable=False),
    Column("seq", BigInt, nullable=False),
    Column("indexed_at", Float, nullable=False),
    Column("ext", String(16), nullable=False, server_default=""),
    Column("source", String(16), nullable=False, server_default="folder"),  # "folder" or "catalog"
    Column("caption", Text),
    Column("taken_at", String(19)),  # EXIF DateTimeOriginal, ISO 8601 without zone
    Column("ocr_text", Text),
    Column("sidecar_sig", Text, nullable=False, server_default=""),
    UniqueConstraint("collection_id", "path", name="uq_images_path"),
    Index("ix_images_hash", "collection_id", "content_hash"),
    Index("ix_images_seq", "collection_id", "seq"),
)

#: The last error of each file that could not be indexed.
file_errors = Table(
    "file_errors", metadata,
    Column("id", BigInt, primary_key=True),
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
    Column("path", Text, nullable=False),
    Column("size", BigInt, nullable=False),
    Column("mtime", Float, nullable=False),
    Column("error", Text, nullable=False),
    Column("at", Float, nullable=False),
    UniqueConstraint("collection_id", "path", name="uq_errors_path"),
)

products = Table(
    "products", metadata,
    Column("id", BigInt, primary_key=True),
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
    Column("product_key", Text, nullable=False),  # the catalog's product id
    Column("title", Text),
    Column("description", Text),
    Column("caption", Text),
    Column("catalog", Text, nullable=False),  # the catalog file it was imported from
    Column("fingerprint", String(32), nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("collection_id", "product_key", name="uq_products_key"),
    Index("ix_products_catalog", "collection_id", "catalog"),
)

product_images = Table(
    "product_images", metadata,
    Column("product_id", BigInt, ForeignKey("products.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True, autoincrement=False),
    Column("ref", Text, nullable=False),  # the URL or path as the catalog gives it
    Column("image_id", BigInt, ForeignKey("images.id", ondelete="SET NULL")),  # NULL: download/decoding failed
    Index("ix_product_images_image", "image_id"),
)

attributes = Table(
    "attributes", metadata,
    Column("id", BigInt, primary_key=True),
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
    Column("image_id", BigInt, ForeignKey("images.id", ondelete="CASCADE")),
    Column("product_id", BigInt, ForeignKey("products.id", ondelete="CASCADE")),
    Column("key", Text, nullable=False),
    Column("value", Text, nullable=False),  # as given
    Column("value_norm", Text, nullable=False),  # casefolded, for string comparisons
    Column("value_num", Float),  # when the value reads as a number
    Index("ix_attributes_text", "collection_id", "key", "value_norm"),
    Index("ix_attributes_num", "collection_id", "key", "value_num"),
    Index("ix_attributes_image", "image_id"),
    Index("ix_attributes_product", "product_id"),
)

texts = Table(
    "texts", metadata,
    Column("id", BigInt, primary_key=True),
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
    Column("image_id", BigInt, ForeignKey("images.id", ondelete="CASCADE")),
    Column("product_id", BigInt, ForeignKey("products.id", ondelete="CASCADE")),
    Column("field", String(16), nullable=False),  # "caption", "title" or "generated"
    Column("text", Text, nullable=False),
    Column("text_hash", String(32), nullable=False),
    Column("vector", LargeBinary, nullable=False),
    Column("seq", BigInt, nullable=False),
    Index("ix_texts_seq", "collection_id", "seq"),
    Index("ix_texts_hash", "collection_id", "text_hash"),
    Index("ix_texts_image", "image_id"),
    Index("ix_texts_product", "product_id"),
)

#: What a model generated for an image's content (captions, answers): computed once per
#: (content, task, model, question), shared by every collection.
generated = Table(
    "generated", metadata,
    Column("id", BigInt, primary_key=True),
    Column("content_hash", String(64), nullable=False),
    Column("task", String(16), nullable=False),  # "caption" or "answer"
    Column("model", Text, nullable=False),
    Column("question", Text, nullable=False),  # "" for captions
    Column("text", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("content_hash", "task", "model", "question", name="uq_generated"),
)

#: Zero-shot tags (``searchengine tag``): a filter field (``tag = cat``) and keyword text.
tags = Table(
    "tags", metadata,
    Column("id", BigInt, primary_key=True),
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
    Column("image_id", BigInt, ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    Column("label", Text, nullable=False),
    Column("label_norm", Text, nullable=False),
    Column("score", Float, nullable=False),  # the label's zero-shot probability
    Index("ix_tags_label", "collection_id", "label_norm"),
    Index("ix_tags_image", "image_id"),
)

#: The folders a collection's files were indexed from. Originals and thumbnails are
#: served only when the file's resolved real path lies inside one of them.
roots = Table(
    "roots", metadata,
    Column("id", BigInt, primary_key=True),
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
    Column("path", Text, nullable=False),
    Column("added_at", Float, nullable=False),
    UniqueConstraint("collection_id", "path", name="uq_roots_path"),
)

#: The tables whose rows carry a vector, by index kind.
VECTOR_TABLES = {"images": images, "texts": texts}


def create_all(conn: Connection) -> None:
    """Create the current schema in an empty database: the tables and the keyword documents."""
    metadata.create_all(conn)
    keywords.create_schema(conn)
