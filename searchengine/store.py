"""The SQL metadata store (SQLAlchemy Core): the source of truth.

Every image row keeps its vector (float16), so the faiss index can always be rebuilt.
SQLite (WAL) by default, any SQLAlchemy URL otherwise. The schema is versioned by
numbered migrations in :data:`MIGRATIONS`.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np
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
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from . import keyword
from .errors import CollectionNotFoundError, StoreError

__all__ = [
    "Store", "CollectionRecord", "ImageRecord", "FileErrorRecord", "NewImage", "ProductWrite", "ProductRecord",
    "TextRecord", "Attributes", "SCHEMA_VERSION", "pack_vectors", "unpack_vectors", "content_hash", "text_hash",
]

#: Multi-valued attributes: key -> values (strings, or numbers as floats).
Attributes = Mapping[str, Sequence["str | float"]]
VectorKind = Literal["images", "texts"]

metadata = MetaData()
#: 64-bit keys and sizes on every database; on SQLite "INTEGER PRIMARY KEY" (already 64-bit) keeps rowid ids.
BigInt = BigInteger().with_variant(Integer(), "sqlite")

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

def _collection_columns() -> list[Column]:
    return [
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
    ]


def _file_columns() -> list[Column]:
    """The columns every per-file table starts with: a 64-bit key, the collection, the file's stat."""
    return [
        Column("id", BigInt, primary_key=True),
        Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
        Column("path", Text, nullable=False),
        Column("size", BigInt, nullable=False),
        Column("mtime", Float, nullable=False),
    ]


def _image_columns() -> list:
    return [
        *_file_columns(),
        Column("content_hash", String(64), nullable=False),
        Column("width", Integer, nullable=False),
        Column("height", Integer, nullable=False),
        Column("vector", LargeBinary, nullable=False),
        Column("seq", BigInt, nullable=False),
        Column("indexed_at", Float, nullable=False),
        UniqueConstraint("collection_id", "path", name="uq_images_path"),
        Index("ix_images_hash", "collection_id", "content_hash"),
        Index("ix_images_seq", "collection_id", "seq"),
    ]


def _error_columns() -> list:
    return [*_file_columns(), Column("error", Text, nullable=False), Column("at", Float, nullable=False),
            UniqueConstraint("collection_id", "path", name="uq_errors_path")]


#: Columns added to existing tables by version 2 (captions, dates, text in images, catalogs).
def _v2_collection_columns() -> list[Column]:
    return [Column("text_index_seq", BigInt, nullable=False, server_default="0"),
            Column("ocr", Integer, nullable=False, server_default="0")]  # 1: read the text in images at ingest


def _v2_image_columns() -> list[Column]:
    return [
        Column("ext", String(16), nullable=False, server_default=""),
        Column("source", String(16), nullable=False, server_default="folder"),  # "folder" or "catalog"
        Column("caption", Text),
        Column("taken_at", String(19)),  # EXIF DateTimeOriginal, ISO 8601 without zone
        Column("ocr_text", Text),
        Column("sidecar_sig", Text, nullable=False, server_default=""),
    ]

#: Version 3: the model whose generated captions are searchable text (``index --caption``).
def _v3_collection_columns() -> list[Column]:
    return [Column("caption_model", Text)]


#: Version 5: a SHA-256 of each index file as written, checked before the file is read again.
def _v5_collection_columns() -> list[Column]:
    return [Column("index_checksum", Text), Column("text_index_checksum", Text)]


collections = Table("collections", metadata, *_collection_columns(), *_v2_collection_columns(),
                    *_v3_collection_columns(), *_v5_collection_columns())
images = Table("images", metadata, *_image_columns(), *_v2_image_columns())
file_errors = Table("file_errors", metadata, *_error_columns())

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
    Column("field", String(16), nullable=False),  # "caption" or "title"
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

#: Version 4: the folders a collection's files were indexed from. Originals and thumbnails are
#: served only when the file's resolved real path lies inside one of them.
roots = Table(
    "roots", metadata,
    Column("id", BigInt, primary_key=True),
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
    Column("path", Text, nullable=False),
    Column("added_at", Float, nullable=False),
    UniqueConstraint("collection_id", "path", name="uq_roots_path"),
)

_VECTOR_TABLES = {"images": images, "texts": texts}


def _ids_in(table: Table, collection_id: int, ids: Sequence[int]):
    """Rows of ``table`` with these primary keys in the collection, looked up by primary key.

    ``collection_id + 0`` keeps SQLite from reading an index that starts with the collection id
    instead (without statistics its planner did for 11 ids or more, scanning the whole collection: 100 ms a query at
    1M images); PostgreSQL plans it the same way, by the key."""
    return and_(table.c.id.in_(ids), (table.c.collection_id + 0) == collection_id)


def outermost(paths: Iterable[str]) -> list[str]:
    """The paths that are not below another of them, sorted."""
    out = sorted(set(paths))
    return [p for p in out if not any(p != o and p.startswith(o.rstrip("/") + "/") for o in out)]


def _insert_or(conn: Connection, table: Table, keys: Sequence[str], update: Sequence[str] = ()):
    """``INSERT ... ON CONFLICT (keys)``: rows whose unique key exists already get the new values of the
    ``update`` columns (nothing changes without any). A row another transaction inserted meanwhile is
    updated, not a unique-key error: upserts rely on the constraint, not on the isolation level."""
    name = conn.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        raise StoreError(f"the metadata store needs SQLite or PostgreSQL, not {name}")
    stmt = dialect_insert(table)
    if not update:
        return stmt.on_conflict_do_nothing(index_elements=list(keys))
    return stmt.on_conflict_do_update(index_elements=list(keys), set_={c: stmt.excluded[c] for c in update})


#: The PostgreSQL advisory lock that one process at a time holds while it migrates the schema.
_SCHEMA_LOCK = 0x736561726368  # "search"


def _writer_key(collection: str) -> int:
    """The advisory lock key of a collection's writer: 64 bits of a hash of its name."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"searchengine writer {collection}".encode()).digest()[:8], "big",
                          signed=True)


def _lock_schema(conn: Connection) -> None:
    """Migrate one process at a time: another one that opened the store meanwhile waits, then
    finds the schema current (without the lock both would create the same tables)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
    elif conn.dialect.name == "sqlite":
        # sqlite3 begins a transaction only before its first INSERT/UPDATE/DELETE, so migrations'
        # CREATE/ALTER statements ran outside it; an immediate transaction holds them and the write lock
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _m001_initial(conn: Connection) -> None:
    v1 = MetaData()  # the tables as version 1 released them
    Table("collections", v1, *_collection_columns())
    Table("images", v1, *_image_columns())
    Table("file_errors", v1, *_error_columns())
    v1.create_all(conn)


def _add_columns(conn: Connection, table: str, columns: Sequence[Column]) -> None:
    for col in columns:
        ddl = f"ALTER TABLE {table} ADD COLUMN {col.name} {col.type.compile(conn.dialect)}"
        if col.server_default is not None:
            ddl += f" DEFAULT '{col.server_default.arg}'" if isinstance(col.type, (String, Text)) \
                else f" DEFAULT {col.server_default.arg}"
        conn.exec_driver_sql(ddl + ("" if col.nullable else " NOT NULL"))


def _m002_texts_and_catalogs(conn: Connection) -> None:
    _add_columns(conn, "collections", _v2_collection_columns())
    _add_columns(conn, "images", _v2_image_columns())
    for image_id, path in conn.execute(select(images.c.id, images.c.path)).all():
        conn.execute(update(images).where(images.c.id == image_id).values(ext=file_type(path)))
    metadata.create_all(conn, tables=[products, product_images, attributes, texts])
    keyword.create_schema(conn)
    _refresh_docs(conn, [int(i) for i in conn.execute(select(images.c.id)).scalars()], derived=False)


def _m003_generated_and_tags(conn: Connection) -> None:
    _add_columns(conn, "collections", _v3_collection_columns())
    metadata.create_all(conn, tables=[generated, tags])


def _m004_roots(conn: Connection) -> None:
    """Existing collections get their images' folders as roots (inside the roots they were indexed from)."""
    metadata.create_all(conn, tables=[roots])
    by_collection: dict[int, set[str]] = {}
    for cid, path in conn.execute(select(images.c.collection_id, images.c.path)).all():
        by_collection.setdefault(int(cid), set()).add(os.path.dirname(path))
    now = time.time()
    for cid, folders in by_collection.items():
        conn.execute(insert(roots), [dict(collection_id=cid, path=p, added_at=now) for p in outermost(folders)])


def _m005_index_checksums(conn: Connection) -> None:
    """Index files written before have no checksum: they are trusted once and get one on their next save."""
    _add_columns(conn, "collections", _v5_collection_columns())


#: Numbered migrations: ``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``.
MIGRATIONS: list[Callable[[Connection], None]] = [_m001_initial, _m002_texts_and_catalogs, _m003_generated_and_tags,
                                                  _m004_roots, _m005_index_checksums]
SCHEMA_VERSION = len(MIGRATIONS)


def content_hash(data: bytes) -> str:
    """What ``images.content_hash`` holds: BLAKE2b-128 of the file's bytes, hex."""
    import hashlib

    return hashlib.blake2b(data, digest_size=16).hexdigest()


def pack_vectors(vectors: np.ndarray) -> list[bytes]:
    """float32 rows -> little-endian float16 blobs."""
    return [row.tobytes() for row in np.asarray(vectors, dtype="<f2")]


def unpack_vectors(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f2").reshape(len(blobs), dim).astype(np.float32)


def as_stored(vectors: np.ndarray) -> np.ndarray:
    """The float32 values a vector has after a round trip through the store."""
    return np.asarray(vectors, dtype="<f2").astype(np.float32)


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
    """A stored image row (``attributes`` are not loaded: see :meth:`Store.attributes_of`)."""

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


_IMAGE_COLS = (images.c.id, images.c.path, images.c.size, images.c.mtime, images.c.content_hash,
               images.c.width, images.c.height, images.c.indexed_at, images.c.caption, images.c.taken_at,
               images.c.ocr_text, images.c.sidecar_sig, images.c.source)


def file_type(path: str) -> str:
    """What the ``type`` filter compares: the lowercased extension without its dot (jpeg -> jpg)."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return {"jpeg": "jpg", "tiff": "tif", "heif": "heic"}.get(ext, ext)[:16]


def text_hash(text: str) -> str:
    return content_hash(text.encode("utf-8"))


def number(value: object) -> float | None:
    """A value as a number when it reads as one (finite), else None."""
    import math

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


class casefold(FunctionElement):
    """Unicode case folding in SQL (SQLite's lower() folds ASCII only): filters compare with it."""

    type = Text()
    inherit_cache = True
    name = "casefold"


@compiles(casefold)
def _casefold_default(element, compiler, **kw):  # PostgreSQL's lower() is Unicode-aware
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(casefold, "sqlite")
def _casefold_sqlite(element, compiler, **kw):
    return f"se_casefold({compiler.process(element.clauses, **kw)})"


def _sqlite_casefold(value: object) -> object:
    return value.casefold() if isinstance(value, str) else value


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - exercised via connect
    dbapi_conn.create_function("se_casefold", 1, _sqlite_casefold, deterministic=True)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    _sqlite_wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_wal(cur, patience: float = 30.0) -> None:
    """Switch the database to WAL, which persists in the file, so only a new database changes mode.

    Connections opening a new database at once race for the switch, and SQLite answers the
    loser "database is locked" at once instead of waiting in the busy handler; it retries.
    """
    deadline = time.monotonic() + patience
    delay = 0.005
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class _Engine:
    """The SQLAlchemy engine, with every database error raised as :class:`StoreError`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.url = engine.url
        self.dialect = engine.dialect

    def connect(self):
        return self._translating(self._engine.connect, "database error")

    def begin(self):
        return self._translating(self._engine.begin, "cannot write to the metadata store")

    @contextmanager
    def _translating(self, opener: Callable, what: str) -> Iterator[Connection]:
        try:
            with opener() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"{what}: {_reason(exc)}") from exc

    def raw_connect(self) -> Connection:
        """A connection the caller holds and closes; only a failure to open it becomes a StoreError."""
        try:
            return self._engine.connect()
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {_reason(exc)}") from exc

    def dispose(self) -> None:
        self._engine.dispose()


def _reason(exc: SQLAlchemyError) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


class Store:
    """Collections, images (with vectors) and per-file errors."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            if url.startswith("sqlite:///"):
                Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url)
        except OSError as exc:
            raise StoreError(f"cannot create the data directory for {url}: {exc}") from exc
        except ModuleNotFoundError as exc:
            raise StoreError(f"the database driver for {url.split(':')[0]} is not installed ({exc.name}); "
                             "for PostgreSQL: pip install 'searchengine[postgres]'") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"invalid database URL {url!r}: {exc}") from exc
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        self.engine = _Engine(engine)
        self._writer_conns: dict[str, Connection] = {}
        self._migrate()

    def close(self) -> None:
        for name in list(self._writer_conns):
            self.unlock_writer(name)
        self.engine.dispose()

    # -- one writer per collection, across machines -------------------------------------------
    def lock_writer(self, collection: str) -> bool:
        """On PostgreSQL, take the collection's writer lock in the database: a session advisory lock
        on a connection held until :meth:`unlock_writer` (the server drops it if the process dies).
        False when another session holds it. Other databases live in one data directory, whose
        lock file (:mod:`searchengine.locks`) is the lock: True."""
        if self.engine.dialect.name != "postgresql" or collection in self._writer_conns:
            return True
        conn = self.engine.raw_connect()
        try:
            got = bool(conn.execute(select(func.pg_try_advisory_lock(_writer_key(collection)))).scalar())
            conn.commit()  # the session lock outlives the transaction; the connection is not left in one
        except SQLAlchemyError as exc:
            conn.close()
            raise StoreError(f"database error: {_reason(exc)}") from exc
        if not got:
            conn.close()
            return False
        self._writer_conns[collection] = conn
        return True

    def unlock_writer(self, collection: str) -> None:
        conn = self._writer_conns.pop(collection, None)
        if conn is None:
            return
        try:
            conn.execute(select(func.pg_advisory_unlock(_writer_key(collection))))
            conn.commit()
        except SQLAlchemyError:
            pass  # the connection is gone, and its session lock with it
        finally:
            conn.close()

    # -- schema ---------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self.engine.connect() as conn:
            if inspect(conn).has_table("schema_version") and self._version(conn) == SCHEMA_VERSION:
                return  # the usual case: no lock, no write (a read-only database opens)
        with self.engine.begin() as conn:
            _lock_schema(conn)
            metadata.create_all(conn, tables=[schema_version])
            current = self._version(conn)
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"the store's schema version {current} is newer than this engine's ({SCHEMA_VERSION}); upgrade searchengine"
                )
            for version in range(current, SCHEMA_VERSION):
                MIGRATIONS[version](conn)
                conn.execute(insert(schema_version).values(version=version + 1))

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return self._version(conn)

    @staticmethod
    def _version(conn: Connection) -> int:
        return int(conn.execute(select(func.max(schema_version.c.version))).scalar() or 0)

    # -- collections ----------------------------------------------------------------------
    def get_collection(self, name: str) -> CollectionRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(collections).where(collections.c.name == name)).mappings().first()
        return CollectionRecord(**row) if row else None

    def require_collection(self, name: str) -> CollectionRecord:
        rec = self.get_collection(name)
        if rec is None:
            raise CollectionNotFoundError(
                f"collection {name!r} does not exist yet; create it with `searchengine index FOLDER`"
            )
        return rec

    def list_collections(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(collections.c.name).order_by(collections.c.name)).scalars())

    def create_collection(self, name: str, model_spec: str, dim: int, fingerprint: bytes,
                          fingerprint_id: str, index_factory: str) -> CollectionRecord:
        """The new collection, or the one another process created meanwhile with the same model."""
        with self.engine.begin() as conn:
            conn.execute(_insert_or(conn, collections, ["name"]).values(
                name=name, model_spec=model_spec, dim=dim, fingerprint=fingerprint,
                fingerprint_id=fingerprint_id, index_factory=index_factory, index_note="",
                next_seq=1, index_seq=0, text_index_seq=0, ocr=0, created_at=time.time(),
            ))
        rec = self.require_collection(name)
        if (rec.model_spec, rec.dim) != (model_spec, dim):
            raise StoreError(f"collection {name!r} was created meanwhile with the model {rec.model_spec}")
        return rec

    def set_index_state(self, collection_id: int, index_seq: int, note: str, kind: VectorKind = "images",
                        checksum: str | None = None) -> None:
        values = (dict(index_seq=index_seq, index_note=note, index_checksum=checksum) if kind == "images"
                  else dict(text_index_seq=index_seq, text_index_checksum=checksum))
        with self.engine.begin() as conn:
            conn.execute(update(collections).where(collections.c.id == collection_id).values(**values))

    def set_ocr(self, collection_id: int, enabled: bool) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(collections).where(collections.c.id == collection_id).values(ocr=int(enabled)))

    def ocr_hashes(self, collection_id: int) -> frozenset[str]:
        """Contents whose text has been read (OCR), even if none was found."""
        with self.engine.connect() as conn:
            return frozenset(conn.execute(select(images.c.content_hash).where(
                images.c.collection_id == collection_id, images.c.ocr_text.is_not(None))).scalars())

    def set_index_factory(self, collection_id: int, factory: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(collections).where(collections.c.id == collection_id).values(index_factory=factory))

    def current_seq(self, collection_id: int) -> int:
        """The highest sequence number written so far (0 for none)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(collections.c.next_seq).where(collections.c.id == collection_id)).scalar_one()) - 1

    # -- images ---------------------------------------------------------------------------
    def count_images(self, collection_id: int) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(images)
                                    .where(images.c.collection_id == collection_id)).scalar_one())

    def images_by_ids(self, collection_id: int, ids: Iterable[int]) -> dict[int, ImageRecord]:
        id_list = [int(i) for i in ids]
        out: dict[int, ImageRecord] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(id_list, 900):
                rows = conn.execute(select(*_IMAGE_COLS).where(
                    _ids_in(images, collection_id, chunk)))
                out.update({r.id: ImageRecord(**r._mapping) for r in rows})
        return out

    def image_by_path(self, collection_id: int, path: str) -> ImageRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(*_IMAGE_COLS).where(
                images.c.collection_id == collection_id, images.c.path == path)).first()
        return ImageRecord(**row._mapping) if row else None

    def images_at(self, collection_id: int, paths: Iterable[str]) -> list[ImageRecord]:
        """Rows at exactly these paths."""
        out: list[ImageRecord] = []
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(set(paths)), 900):
                rows = conn.execute(select(*_IMAGE_COLS).where(images.c.collection_id == collection_id,
                                                               images.c.path.in_(chunk)))
                out.extend(ImageRecord(**r._mapping) for r in rows)
        return out

    def claim_for_folder(self, ids: Sequence[int]) -> None:
        """Rows a catalog brought in that a folder run also covers: no longer removed with their products."""
        with self.engine.begin() as conn:
            for chunk in _chunks(list(ids), 900):
                conn.execute(update(images).where(images.c.id.in_(chunk)).values(source="folder"))

    def images_under(self, collection_id: int, roots: Sequence[str]) -> list[ImageRecord]:
        """Rows whose path is one of ``roots`` or lies below one of them."""
        out: list[ImageRecord] = []
        with self.engine.connect() as conn:
            for chunk in _chunks(list(roots), 200):  # bounded expression depth for many roots
                conds = []
                for root in chunk:
                    prefix = root.rstrip("/") + "/"
                    conds += [images.c.path == root, func.substr(images.c.path, 1, len(prefix)) == prefix]
                rows = conn.execute(select(*_IMAGE_COLS).where(images.c.collection_id == collection_id, or_(*conds)))
                out.extend(ImageRecord(**r._mapping) for r in rows)
        return out

    def hash_index(self, collection_id: int) -> list[tuple[str, int, str]]:
        """(content hash, id, path) of every row, in id order."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(images.c.content_hash, images.c.id, images.c.path)
                                .where(images.c.collection_id == collection_id).order_by(images.c.id))
            return [(h, int(i), p) for h, i, p in rows]

    def vectors_for(self, collection_id: int, ids: Sequence[int], kind: VectorKind = "images") -> np.ndarray:
        """The stored vectors of ``ids``, in that order (KeyError if one is not stored: see :meth:`live_vectors`)."""
        blobs = self._vector_blobs(collection_id, ids, kind)
        return unpack_vectors([blobs[int(i)] for i in ids], self._dim(collection_id))

    def live_vectors(self, collection_id: int, ids: Sequence[int],
                     kind: VectorKind = "images") -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of those of ``ids`` still stored, in the given order: for readers, whose
        ids may have been removed by a writer since they were read."""
        blobs = self._vector_blobs(collection_id, ids, kind)
        found = [int(i) for i in ids if int(i) in blobs]
        return np.asarray(found, dtype=np.int64), unpack_vectors([blobs[i] for i in found], self._dim(collection_id))

    def _vector_blobs(self, collection_id: int, ids: Sequence[int], kind: VectorKind) -> dict[int, bytes]:
        table = _VECTOR_TABLES[kind]
        blobs: dict[int, bytes] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks([int(i) for i in ids], 900):
                for i, v in conn.execute(select(table.c.id, table.c.vector).where(
                        _ids_in(table, collection_id, chunk))):
                    blobs[int(i)] = v
        return blobs

    def iter_vectors(self, collection_id: int, min_seq: int = 0, chunk: int = 8192,
                     kind: VectorKind = "images") -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in chunks, for rows with ``seq > min_seq``, in id order."""
        table = _VECTOR_TABLES[kind]
        dim = self._dim(collection_id)
        last = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(select(table.c.id, table.c.vector).where(
                    table.c.collection_id == collection_id, table.c.seq > min_seq, table.c.id > last,
                ).order_by(table.c.id).limit(chunk)).all()
            if not rows:
                return
            last = int(rows[-1][0])
            yield np.array([r[0] for r in rows], dtype=np.int64), unpack_vectors([r[1] for r in rows], dim)

    def all_vectors(self, collection_id: int, kind: VectorKind = "images") -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every row, in id order."""
        parts = list(self.iter_vectors(collection_id, kind=kind))
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, self._dim(collection_id)), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def ids_newer_than(self, collection_id: int, seq: int, kind: VectorKind = "images") -> np.ndarray:
        """Ids of rows written after sequence number ``seq``."""
        table = _VECTOR_TABLES[kind]
        with self.engine.connect() as conn:
            return np.fromiter(conn.execute(select(table.c.id).where(
                table.c.collection_id == collection_id, table.c.seq > seq)).scalars(), dtype=np.int64)

    def count_live(self, collection_id: int, kind: VectorKind = "images") -> int:
        """How many rows of ``kind`` the collection has (each one vector in its index)."""
        table = _VECTOR_TABLES[kind]
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)
                                    .where(table.c.collection_id == collection_id)).scalar_one())

    def live_ids(self, collection_id: int, kind: VectorKind = "images") -> np.ndarray:
        table = _VECTOR_TABLES[kind]
        with self.engine.connect() as conn:
            return np.fromiter(conn.execute(select(table.c.id).where(table.c.collection_id == collection_id)).scalars(),
                               dtype=np.int64)

    def _dim(self, collection_id: int) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(collections.c.dim).where(collections.c.id == collection_id)).scalar_one())

    # -- the writer's transaction ---------------------------------------------------------
    def write_batch(self, collection_id: int, *, new: Sequence[NewImage] = (), new_vectors: np.ndarray | None = None,
                    updated: Sequence[tuple[int, NewImage]] = (), updated_vectors: np.ndarray | None = None,
                    moved: Sequence[tuple[int, NewImage]] = (), touched: Sequence[tuple[int, NewImage]] = (),
                    removed: Sequence[int] = (), errors: Sequence[FileErrorRecord] = (),
                    cleared_errors: Sequence[str] = (),
                    text_vectors: Mapping[str, np.ndarray] | None = None) -> tuple[list[int], int]:
        """Apply one batch of changes in one transaction; returns (ids of ``new``, the batch's seq).

        Every written row also gets its caption, date, text, attributes and keyword document;
        ``text_vectors`` maps :func:`text_hash` of each new caption to its vector.
        """
        now = time.time()
        with self.engine.begin() as conn:
            seq = self._next_seq(conn, collection_id)
            if removed:
                keyword.remove(conn, list(removed))
                for chunk in _chunks(list(removed), 900):
                    conn.execute(delete(images).where(_ids_in(images, collection_id, chunk)))
            for image_id, n in moved:
                conn.execute(update(images).where(images.c.id == image_id).values(
                    path=n.path, size=n.size, mtime=n.mtime, ext=file_type(n.path)))
            if updated:
                _forget_derived(conn, [i for i, _ in updated])
                for (image_id, n), blob in zip(updated, pack_vectors(updated_vectors)):
                    conn.execute(update(images).where(images.c.id == image_id).values(
                        path=n.path, size=n.size, mtime=n.mtime, content_hash=n.content_hash, ext=file_type(n.path),
                        width=n.width, height=n.height, vector=blob, seq=seq, indexed_at=now))
            new_ids: list[int] = []
            if new:
                blobs = pack_vectors(new_vectors)
                rows = [dict(collection_id=collection_id, path=n.path, size=n.size, mtime=n.mtime,
                             content_hash=n.content_hash, width=n.width, height=n.height, vector=b, ext=file_type(n.path),
                             source=n.source, seq=seq, indexed_at=now) for n, b in zip(new, blobs)]
                # by path: a row written at the same path meanwhile is replaced and keeps its id
                upsert = _insert_or(conn, images, ["collection_id", "path"], [c for c in rows[0] if c != "collection_id"])
                by_path = {p: int(i) for i, p in conn.execute(upsert.returning(images.c.id, images.c.path), rows)}
                new_ids = [by_path[n.path] for n in new]
                _forget_derived(conn, new_ids)  # of such a row's old content
            for image_id, n in touched:
                conn.execute(update(images).where(images.c.id == image_id).values(size=n.size, mtime=n.mtime))
            written = list(zip(new_ids, new)) + [*updated, *moved, *touched]
            self._write_image_meta(conn, collection_id, seq, written, text_vectors or {})
            done_paths = [n.path for n in new] + [n.path for _, n in (*updated, *moved, *touched)]
            for chunk in _chunks(done_paths + list(cleared_errors), 900):
                conn.execute(delete(file_errors).where(file_errors.c.collection_id == collection_id,
                                                       file_errors.c.path.in_(chunk)))
            self._write_errors(conn, collection_id, errors)
        return new_ids, seq

    @staticmethod
    def _next_seq(conn: Connection, collection_id: int) -> int:
        """Take the collection's next sequence number: one atomic increment, so concurrent writers
        never share one (a read, then a write, would let both read the same number)."""
        taken = conn.execute(update(collections).where(collections.c.id == collection_id)
                             .values(next_seq=collections.c.next_seq + 1).returning(collections.c.next_seq)).scalar_one()
        return int(taken) - 1

    @staticmethod
    def _write_errors(conn: Connection, collection_id: int, errors: Sequence[FileErrorRecord]) -> None:
        latest = {err.path: err for err in errors}  # one row per path: its last error
        if latest:
            conn.execute(_insert_or(conn, file_errors, ["collection_id", "path"], ["size", "mtime", "error", "at"]),
                         [dict(collection_id=collection_id, path=e.path, size=e.size, mtime=e.mtime, error=e.error,
                               at=e.at) for e in latest.values()])

    def _write_image_meta(self, conn: Connection, cid: int, seq: int, written: Sequence[tuple[int, NewImage]],
                          text_vectors: Mapping[str, np.ndarray]) -> None:
        if not written:
            return
        ids = [i for i, _ in written]
        for image_id, n in written:
            conn.execute(update(images).where(images.c.id == image_id).values(
                caption=n.caption, taken_at=n.taken_at, ocr_text=n.ocr_text, sidecar_sig=n.sidecar_sig))
        for chunk in _chunks(ids, 900):
            conn.execute(delete(attributes).where(attributes.c.image_id.in_(chunk)))
        _insert_attributes(conn, cid, [("image_id", i, n.attributes) for i, n in written])
        _sync_texts(conn, cid, seq, "image_id", [(i, "caption", n.caption) for i, n in written], text_vectors)
        _refresh_docs(conn, ids)

    # -- catalog products -----------------------------------------------------------------
    def catalog_products(self, collection_id: int, catalog: str) -> dict[str, tuple[int, str]]:
        """key -> (id, fingerprint) of the products imported from ``catalog``."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(products.c.product_key, products.c.id, products.c.fingerprint).where(
                products.c.collection_id == collection_id, products.c.catalog == catalog))
            return {k: (int(i), f) for k, i, f in rows}

    def write_products(self, collection_id: int, upserts: Sequence[ProductWrite], *, removed: Sequence[int] = (),
                       text_vectors: Mapping[str, np.ndarray] | None = None, errors: Sequence[FileErrorRecord] = (),
                       cleared_errors: Sequence[str] = ()) -> list[int]:
        """Insert or update products by key and delete ``removed`` ones, in one transaction; returns the ids."""
        columns = ["title", "description", "caption", "catalog", "fingerprint", "updated_at"]
        with self.engine.begin() as conn:
            seq = self._next_seq(conn, collection_id)
            upsert = _insert_or(conn, products, ["collection_id", "product_key"], columns).returning(products.c.id)
            ids = [int(conn.execute(upsert, dict(
                collection_id=collection_id, product_key=p.key, title=p.title, description=p.description,
                caption=p.caption, catalog=p.catalog, fingerprint=p.fingerprint, updated_at=time.time())).scalar_one())
                for p in upserts]  # by key: each row is now locked by this transaction
            affected = set(_linked_images(conn, ids + list(removed)))  # images whose documents change
            for chunk in _chunks(ids, 900):  # an updated product's links and attributes are replaced
                conn.execute(delete(product_images).where(product_images.c.product_id.in_(chunk)))
                conn.execute(delete(attributes).where(attributes.c.product_id.in_(chunk)))
            links = [dict(product_id=pid, position=pos, ref=ref, image_id=img)
                     for pid, p in zip(ids, upserts) for pos, ref, img in p.images]
            if links:
                conn.execute(insert(product_images), links)
            affected.update(link["image_id"] for link in links if link["image_id"] is not None)
            _insert_attributes(conn, collection_id, [("product_id", pid, p.attributes) for pid, p in zip(ids, upserts)])
            fields = [(pid, f, getattr(p, f)) for pid, p in zip(ids, upserts) for f in ("title", "caption")]
            _sync_texts(conn, collection_id, seq, "product_id", fields, text_vectors or {})
            for chunk in _chunks(list(removed), 900):
                conn.execute(delete(products).where(_ids_in(products, collection_id, chunk)))
            for chunk in _chunks(list(cleared_errors), 900):
                conn.execute(delete(file_errors).where(file_errors.c.collection_id == collection_id,
                                                       file_errors.c.path.in_(chunk)))
            self._write_errors(conn, collection_id, errors)
            _refresh_docs(conn, sorted(affected))
        return ids

    def unlinked_catalog_images(self, collection_id: int) -> list[int]:
        """Images a catalog brought in that no product uses any more."""
        linked = select(product_images.c.image_id).where(product_images.c.image_id.is_not(None))
        with self.engine.connect() as conn:
            return [int(i) for i in conn.execute(select(images.c.id).where(
                images.c.collection_id == collection_id, images.c.source == "catalog", images.c.id.not_in(linked)))
                .scalars()]

    def count_products(self, collection_id: int) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(products)
                                    .where(products.c.collection_id == collection_id)).scalar_one())

    def products_of_images(self, collection_id: int, image_ids: Iterable[int]) -> dict[int, list[ProductRecord]]:
        """The products each image belongs to (with attributes and image paths)."""
        id_list = [int(i) for i in image_ids]
        links: dict[int, list[int]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(id_list, 900):
                for image_id, pid in conn.execute(select(product_images.c.image_id, product_images.c.product_id)
                                                  .where(product_images.c.image_id.in_(chunk))):
                    links.setdefault(int(image_id), []).append(int(pid))
        found = self.products_by_ids(collection_id, {p for ps in links.values() for p in ps})
        return {i: [found[p] for p in sorted(ps) if p in found] for i, ps in links.items()}

    def products_by_ids(self, collection_id: int, ids: Iterable[int]) -> dict[int, ProductRecord]:
        id_list = [int(i) for i in ids]
        out: dict[int, ProductRecord] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(id_list, 900):
                rows = conn.execute(select(products).where(_ids_in(products, collection_id, chunk))).mappings().all()
                attrs = _attributes_of(conn, "product_id", chunk)
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
        with self.engine.connect() as conn:
            out = _attributes_of(conn, "image_id", ids)
            for image_id, labels in _tags_of(conn, ids).items():
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
        with self.engine.connect() as conn:
            for query in counted:
                for k, v, n in conn.execute(query):
                    entry = out.setdefault(str(k), {}).setdefault(str(v).casefold(), [str(v), 0])
                    entry[1] += int(n)
        return {k: sorted(((v, n) for v, n in vs.values()), key=lambda x: (-x[1], x[0]))[:per_key]
                for k, vs in sorted(out.items())}

    def image_links(self, collection_id: int, catalog: str) -> dict[str, int]:
        """ref -> image id of the images the products of ``catalog`` use."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(product_images.c.ref, product_images.c.image_id)
                                .join(products, products.c.id == product_images.c.product_id)
                                .where(products.c.collection_id == collection_id, products.c.catalog == catalog,
                                       product_images.c.image_id.is_not(None)))
            return {ref: int(i) for ref, i in rows}

    # -- texts ----------------------------------------------------------------------------
    def text_vectors_by_hash(self, collection_id: int, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """Stored vectors of texts already encoded, by :func:`text_hash` (each text is encoded once)."""
        dim = self._dim(collection_id)
        out: dict[str, np.ndarray] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(set(hashes)), 900):
                for h, blob in conn.execute(select(texts.c.text_hash, texts.c.vector).where(
                        texts.c.collection_id == collection_id, texts.c.text_hash.in_(chunk))):
                    out.setdefault(h, unpack_vectors([blob], dim)[0])
        return out

    def texts_by_ids(self, collection_id: int, ids: Iterable[int]) -> dict[int, TextRecord]:
        out: dict[int, TextRecord] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks([int(i) for i in ids], 900):
                for r in conn.execute(select(texts.c.id, texts.c.field, texts.c.text, texts.c.image_id,
                                             texts.c.product_id).where(_ids_in(texts, collection_id, chunk))):
                    out[int(r.id)] = TextRecord(**r._mapping)
        return out

    def count_texts(self, collection_id: int) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(texts)
                                    .where(texts.c.collection_id == collection_id)).scalar_one())

    # -- generated text and tags --------------------------------------------------------------
    def generated_texts(self, task: str, model: str, question: str, hashes: Iterable[str]) -> dict[str, str]:
        """Cached model outputs by content hash (see :data:`generated`)."""
        out: dict[str, str] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(set(hashes)), 900):
                out.update(conn.execute(select(generated.c.content_hash, generated.c.text).where(
                    generated.c.task == task, generated.c.model == model, generated.c.question == question,
                    generated.c.content_hash.in_(chunk))).all())
        return out

    def put_generated(self, task: str, model: str, question: str, items: Mapping[str, str]) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            upsert = _insert_or(conn, generated, ["content_hash", "task", "model", "question"], ["text", "created_at"])
            for chunk in _chunks(sorted(items), 900):
                conn.execute(upsert, [dict(content_hash=h, task=task, model=model, question=question,
                                           text=items[h], created_at=now) for h in chunk])

    def set_caption_model(self, collection_id: int, model: str | None) -> None:
        """The model whose captions are the collection's searchable generated text; another model
        replaces them (they are generated again)."""
        with self.engine.begin() as conn:
            old = conn.execute(select(collections.c.caption_model).where(collections.c.id == collection_id)).scalar()
            if old == model:
                return
            conn.execute(update(collections).where(collections.c.id == collection_id).values(caption_model=model))
            ids = [int(i) for i in conn.execute(select(texts.c.image_id).where(
                texts.c.collection_id == collection_id, texts.c.field == "generated")).scalars()]
            conn.execute(delete(texts).where(texts.c.collection_id == collection_id, texts.c.field == "generated"))
            _refresh_docs(conn, ids)

    def images_without_generated(self, collection_id: int) -> list[ImageRecord]:
        """Images that have no searchable generated caption yet."""
        has = select(texts.c.image_id).where(texts.c.collection_id == collection_id, texts.c.field == "generated",
                                             texts.c.image_id.is_not(None))
        with self.engine.connect() as conn:
            rows = conn.execute(select(*_IMAGE_COLS).where(images.c.collection_id == collection_id,
                                                           images.c.id.not_in(has)).order_by(images.c.id))
            return [ImageRecord(**r._mapping) for r in rows]

    def write_generated(self, collection_id: int, captions: Mapping[int, str],
                        vectors: Mapping[str, np.ndarray]) -> None:
        """Make these generated captions searchable: text rows with vectors (``vectors`` by
        :func:`text_hash`), and the images' keyword documents."""
        with self.engine.begin() as conn:
            seq = self._next_seq(conn, collection_id)
            live = set()
            for chunk in _chunks(sorted(captions), 900):  # images removed meanwhile are skipped
                live |= {int(i) for i in conn.execute(select(images.c.id).where(images.c.id.in_(chunk))).scalars()}
            wanted = [(i, "generated", captions[i]) for i in sorted(live)]
            _sync_texts(conn, collection_id, seq, "image_id", wanted, vectors)
            _refresh_docs(conn, sorted(live))

    def replace_tags(self, collection_id: int, rows: Sequence[tuple[int, str, float]]) -> None:
        """Replace the collection's zero-shot tags with ``(image id, label, probability)`` rows."""
        with self.engine.begin() as conn:
            old = [int(i) for i in conn.execute(select(tags.c.image_id).where(
                tags.c.collection_id == collection_id).distinct()).scalars()]
            conn.execute(delete(tags).where(tags.c.collection_id == collection_id))
            if rows:
                conn.execute(insert(tags), [dict(collection_id=collection_id, image_id=i, label=lab,
                                                 label_norm=lab.casefold().strip(), score=sc) for i, lab, sc in rows])
            _refresh_docs(conn, sorted(set(old) | {i for i, _, _ in rows}))

    def add_roots(self, collection_id: int, paths: Iterable[str]) -> None:
        """Record folders (or single files) this collection's images come from; known ones are kept."""
        new = outermost(os.path.abspath(p) for p in paths)
        with self.engine.begin() as conn:
            have = set(conn.execute(select(roots.c.path).where(roots.c.collection_id == collection_id)).scalars())
            todo = [p for p in new if p not in have and p in outermost(have | {p})]  # not inside a known root
            if todo:  # one added meanwhile by another process is kept
                now = time.time()
                conn.execute(_insert_or(conn, roots, ["collection_id", "path"]),
                             [dict(collection_id=collection_id, path=p, added_at=now) for p in todo])

    def roots(self, collection_id: int) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(conn.execute(select(roots.c.path).where(roots.c.collection_id == collection_id)).scalars())

    def all_images(self, collection_id: int) -> list[ImageRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(*_IMAGE_COLS).where(images.c.collection_id == collection_id)
                                .order_by(images.c.id))
            return [ImageRecord(**r._mapping) for r in rows]

    # -- filters and keywords ---------------------------------------------------------------
    def filtered_ids(self, collection_id: int, condition: ColumnElement) -> np.ndarray:
        """Ids of the images that satisfy a condition built by :func:`filter_condition`."""
        with self.engine.connect() as conn:
            return np.fromiter(conn.execute(select(images.c.id).where(
                images.c.collection_id == collection_id, condition)).scalars(), dtype=np.int64)

    def keyword_search(self, collection_id: int, query: str, limit: int,
                       condition: ColumnElement | None = None) -> list[tuple[int, float]]:
        allowed = None
        if condition is not None:
            def allowed(key: ColumnElement) -> ColumnElement:
                return key.in_(select(images.c.id).where(images.c.collection_id == collection_id, condition))
        with self.engine.connect() as conn:
            return keyword.search(conn, collection_id, query, limit, allowed)

    # -- errors ---------------------------------------------------------------------------
    def file_errors(self, collection_id: int, roots: Sequence[str] | None = None) -> list[FileErrorRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(file_errors.c.path, file_errors.c.error, file_errors.c.size, file_errors.c.mtime,
                                       file_errors.c.at).where(file_errors.c.collection_id == collection_id)
                                .order_by(file_errors.c.path))
            recs = [FileErrorRecord(**r._mapping) for r in rows]
        if roots is None:
            return recs
        prefixes = tuple(r.rstrip("/") + "/" for r in roots)
        return [e for e in recs if e.path in roots or e.path.startswith(prefixes)]

    def count_errors(self, collection_id: int) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(file_errors)
                                    .where(file_errors.c.collection_id == collection_id)).scalar_one())


def _insert_attributes(conn: Connection, cid: int, owners: Sequence[tuple[str, int, Attributes]]) -> None:
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


def _attributes_of(conn: Connection, owner: str, ids: Sequence[int]) -> dict[int, dict[str, list[str]]]:
    out: dict[int, dict[str, list[str]]] = {}
    col = attributes.c[owner]
    for chunk in _chunks(list(ids), 900):
        for owner_id, key, value in conn.execute(select(col, attributes.c.key, attributes.c.value)
                                                 .where(col.in_(chunk)).order_by(attributes.c.id)):
            out.setdefault(int(owner_id), {}).setdefault(key, []).append(value)
    return out


def _sync_texts(conn: Connection, cid: int, seq: int, owner: str, wanted: Sequence[tuple[int, str, str | None]],
                vectors: Mapping[str, np.ndarray]) -> None:
    """Make each (owner, field) have exactly the wanted text; unchanged texts keep their row and vector."""
    col = texts.c[owner]
    have: dict[tuple[int, str], tuple[int, str]] = {}
    for chunk in _chunks(sorted({o for o, _, _ in wanted}), 900):
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
    for chunk in _chunks(drop, 900):
        conn.execute(delete(texts).where(texts.c.id.in_(chunk)))
    if rows:
        conn.execute(insert(texts), rows)


def _forget_derived(conn: Connection, image_ids: Sequence[int]) -> None:
    """Drop what was derived from these images' old content: generated captions and tags."""
    for chunk in _chunks(list(image_ids), 900):
        conn.execute(delete(texts).where(texts.c.image_id.in_(chunk), texts.c.field == "generated"))
        conn.execute(delete(tags).where(tags.c.image_id.in_(chunk)))


def _tags_of(conn: Connection, ids: Sequence[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for chunk in _chunks(list(ids), 900):
        for image_id, label in conn.execute(select(tags.c.image_id, tags.c.label).where(tags.c.image_id.in_(chunk))
                                            .order_by(tags.c.image_id, tags.c.score.desc())):
            out.setdefault(int(image_id), []).append(label)
    return out


def _generated_of(conn: Connection, ids: Sequence[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in _chunks(list(ids), 900):
        for image_id, text in conn.execute(select(texts.c.image_id, texts.c.text).where(
                texts.c.image_id.in_(chunk), texts.c.field == "generated")):
            out[int(image_id)] = text
    return out


def _linked_images(conn: Connection, product_ids: Sequence[int]) -> list[int]:
    out: list[int] = []
    for chunk in _chunks(list(product_ids), 900):
        out += [int(i) for i in conn.execute(select(product_images.c.image_id).where(
            product_images.c.product_id.in_(chunk), product_images.c.image_id.is_not(None))).scalars()]
    return out


def _refresh_docs(conn: Connection, image_ids: Sequence[int], derived: bool = True) -> None:
    """Rebuild the keyword documents of these images from their rows, attributes and products, and
    (``derived``; their tables exist from schema version 3) their tags and generated captions."""
    from .keyword import Doc

    for chunk in _chunks(sorted(set(image_ids)), 500):
        rows = conn.execute(select(images.c.id, images.c.collection_id, images.c.path, images.c.caption,
                                   images.c.ocr_text).where(images.c.id.in_(chunk))).all()
        attrs = _attributes_of(conn, "image_id", chunk)
        words: dict[int, dict[str, list[str]]] = {i: {"title": [], "description": [], "caption": [], "attrs": []}
                                                  for i in chunk}
        for image_id, values in attrs.items():
            words[image_id]["attrs"] += [v for vs in values.values() for v in vs]
        for image_id, labels in (_tags_of(conn, chunk) if derived else {}).items():
            words[image_id]["attrs"] += labels
        for image_id, text in (_generated_of(conn, chunk) if derived else {}).items():
            words[image_id]["caption"].append(text)
        links = conn.execute(select(product_images.c.image_id, products.c.id, products.c.title,
                                    products.c.description, products.c.caption)
                             .join(products, products.c.id == product_images.c.product_id)
                             .where(product_images.c.image_id.in_(chunk))).all()
        product_attrs = _attributes_of(conn, "product_id", sorted({int(r[1]) for r in links}))
        for image_id, pid, title, description, caption in links:
            w = words[int(image_id)]
            w["title"].append(title or "")
            w["description"].append(description or "")
            w["caption"].append(caption or "")
            w["attrs"] += [v for vs in product_attrs.get(int(pid), {}).values() for v in vs]
        docs = []
        for image_id, cid, path, caption, ocr in rows:
            w = words[int(image_id)]
            name = re.sub(r"[_\-.]+", " ", os.path.splitext(os.path.basename(path))[0])
            docs.append(Doc(int(image_id), int(cid), name=name, title=" ".join(w["title"]),
                            caption=" ".join([caption or "", *w["caption"]]).strip(),
                            description=" ".join(w["description"]), attrs=" ".join(w["attrs"]), ocr=ocr or ""))
        keyword.remove(conn, [i for i in chunk if i not in {d.image_id for d in docs}])
        keyword.replace(conn, docs)


#: Filter fields stored on the image row; any other field is an attribute (of the image or its product).
IMAGE_FIELDS = {"path": "path", "type": "ext", "ext": "ext", "taken": "taken_at", "date": "taken_at",
                "caption": "caption", "text": "ocr_text", "width": "width", "height": "height", "size": "size"}
PRODUCT_FIELDS = {"product": "product_key", "product_id": "product_key", "title": "title",
                  "description": "description"}
_NUMERIC = {"width", "height", "size"}


def filter_condition(node) -> ColumnElement:
    """A filter expression (:mod:`searchengine.filters`) as a SQL condition on the ``images`` table.

    Same semantics as :func:`searchengine.filters.evaluate` for attributes: a field matches when
    any of its values does; strings compare casefolded; ``!=`` is ``not =``. The built-in fields
    have a type: ``folder = X`` means "under X"; the text ones (path, type, taken, caption, text,
    product, title, description) take a number in its text form (``taken >= 2021``), and
    ``type = jpeg`` means jpg as the store records it.
    """
    from .errors import QueryError
    from .filters import And, Compare, In, Not, Or

    if isinstance(node, And):
        return and_(*(filter_condition(n) for n in node.items))
    if isinstance(node, Or):
        return or_(*(filter_condition(n) for n in node.items))
    if isinstance(node, Not):
        return ~filter_condition(node.item)
    if isinstance(node, In):
        return or_(*(filter_condition(Compare(node.field, "=", v)) for v in node.values))
    assert isinstance(node, Compare)
    if node.op == "!=":
        return ~filter_condition(Compare(node.field, "=", node.value))
    field_name = node.field.casefold()
    if field_name == "folder":
        if node.op != "=":
            raise QueryError("folder takes = (under that folder) or != (not under it)")
        root = os.path.abspath(os.path.expanduser(value_text(node.value))).rstrip("/")
        return or_(images.c.path == root, func.substr(images.c.path, 1, len(root) + 1) == root + "/")
    if field_name in IMAGE_FIELDS:
        column = images.c[IMAGE_FIELDS[field_name]]
        if field_name in _NUMERIC:
            if not isinstance(node.value, float) or node.op == "~":
                raise QueryError(f"{field_name} is a number: compare it with <, <=, =, >=, > and a number")
            return and_(column.is_not(None), _compare(column, node.op, node.value))
        value = _norm(node.value)
        if field_name in ("type", "ext") and node.op == "=":
            value = file_type("x." + value)  # jpeg means jpg, as stored
        return and_(column.is_not(None), _compare(casefold(column), node.op, value))
    if field_name in PRODUCT_FIELDS:
        column = products.c[PRODUCT_FIELDS[field_name]]
        cond = and_(column.is_not(None), _compare(casefold(column), node.op, _norm(node.value)))
        return images.c.id.in_(select(product_images.c.image_id).join(
            products, products.c.id == product_images.c.product_id).where(cond, product_images.c.image_id.is_not(None)))
    if field_name == "tag" and not (isinstance(node.value, float) and node.op != "~"):
        tagged = select(tags.c.id).where(tags.c.image_id == images.c.id,
                                         _compare(tags.c.label_norm, node.op, _norm(node.value))).correlate(images)
        return or_(tagged.exists(), _attribute_condition(node, field_name))
    return _attribute_condition(node, field_name)


def _attribute_condition(node, field_name: str) -> ColumnElement:
    owned = or_(attributes.c.image_id == images.c.id, attributes.c.product_id.in_(
        select(product_images.c.product_id).where(product_images.c.image_id == images.c.id).correlate(images)))
    if isinstance(node.value, float) and node.op != "~":
        cond = _compare(attributes.c.value_num, node.op, node.value)
    else:
        cond = _compare(attributes.c.value_norm, node.op, _norm(node.value))
    return select(attributes.c.id).where(attributes.c.key == field_name, cond, owned).correlate(images).exists()


def _norm(value: object) -> str:
    return value_text(value).casefold().strip()


def _compare(column, op: str, value: object) -> ColumnElement:
    if op == "~":
        escaped = str(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return column.like(f"%{escaped}%", escape="\\")
    return {"=": column == value, "<": column < value, "<=": column <= value,
            ">": column > value, ">=": column >= value}[op]


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
