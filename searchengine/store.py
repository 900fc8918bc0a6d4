"""The SQL metadata store (SQLAlchemy Core): the source of truth.

Every image row keeps its vector (float16), so the faiss index can always be rebuilt.
SQLite (WAL) by default, any SQLAlchemy URL otherwise. The schema is versioned by
numbered migrations in :data:`MIGRATIONS`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

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
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from .errors import CollectionNotFoundError, StoreError

__all__ = [
    "Store", "CollectionRecord", "ImageRecord", "FileErrorRecord", "NewImage",
    "SCHEMA_VERSION", "pack_vectors", "unpack_vectors", "content_hash",
]

metadata = MetaData()
#: 64-bit keys and sizes on every database; on SQLite "INTEGER PRIMARY KEY" (already 64-bit) keeps rowid ids.
BigInt = BigInteger().with_variant(Integer(), "sqlite")

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
)

def _file_columns() -> list[Column]:
    """The columns every per-file table starts with: a 64-bit key, the collection, the file's stat."""
    return [
        Column("id", BigInt, primary_key=True),
        Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
        Column("path", Text, nullable=False),
        Column("size", BigInt, nullable=False),
        Column("mtime", Float, nullable=False),
    ]


images = Table(
    "images", metadata, *_file_columns(),
    Column("content_hash", String(64), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("vector", LargeBinary, nullable=False),
    Column("seq", BigInt, nullable=False),
    Column("indexed_at", Float, nullable=False),
    UniqueConstraint("collection_id", "path", name="uq_images_path"),
    Index("ix_images_hash", "collection_id", "content_hash"),
    Index("ix_images_seq", "collection_id", "seq"),
)

file_errors = Table(
    "file_errors", metadata, *_file_columns(),
    Column("error", Text, nullable=False),
    Column("at", Float, nullable=False),
    UniqueConstraint("collection_id", "path", name="uq_errors_path"),
)


def _m001_initial(conn: Connection) -> None:
    # Version 1 is the tables above as first released. A later migration that changes a table
    # must give m001 a frozen copy of the version-1 definitions first.
    metadata.create_all(conn, tables=[collections, images, file_errors])


#: Numbered migrations: ``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``.
MIGRATIONS: list[Callable[[Connection], None]] = [_m001_initial]
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


@dataclass(frozen=True)
class NewImage:
    """An image file as the writer stores it."""

    path: str
    size: int
    mtime: float
    content_hash: str
    width: int
    height: int


@dataclass(frozen=True)
class ImageRecord(NewImage):
    """A stored image row."""

    id: int
    indexed_at: float


@dataclass(frozen=True)
class FileErrorRecord:
    path: str
    error: str
    size: int
    mtime: float
    at: float


_IMAGE_COLS = (images.c.id, images.c.path, images.c.size, images.c.mtime, images.c.content_hash,
               images.c.width, images.c.height, images.c.indexed_at)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - exercised via connect
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


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
        self._migrate()

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ---------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self.engine.begin() as conn:
            metadata.create_all(conn, tables=[schema_version])
            current = conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"the store's schema version {current} is newer than this engine's ({SCHEMA_VERSION}); upgrade searchengine"
                )
            for version in range(current, SCHEMA_VERSION):
                MIGRATIONS[version](conn)
                conn.execute(insert(schema_version).values(version=version + 1))

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
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
        with self.engine.begin() as conn:
            conn.execute(insert(collections).values(
                name=name, model_spec=model_spec, dim=dim, fingerprint=fingerprint,
                fingerprint_id=fingerprint_id, index_factory=index_factory, index_note="",
                next_seq=1, index_seq=0, created_at=time.time(),
            ))
        return self.require_collection(name)

    def set_index_state(self, collection_id: int, index_seq: int, note: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(collections).where(collections.c.id == collection_id)
                         .values(index_seq=index_seq, index_note=note))

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
                    images.c.collection_id == collection_id, images.c.id.in_(chunk)))
                out.update({r.id: ImageRecord(**r._mapping) for r in rows})
        return out

    def image_by_path(self, collection_id: int, path: str) -> ImageRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(*_IMAGE_COLS).where(
                images.c.collection_id == collection_id, images.c.path == path)).first()
        return ImageRecord(**row._mapping) if row else None

    def images_under(self, collection_id: int, roots: Sequence[str]) -> list[ImageRecord]:
        """Rows whose path is one of ``roots`` or lies below one of them."""
        from sqlalchemy import or_

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

    def vectors_for(self, collection_id: int, ids: Sequence[int]) -> np.ndarray:
        rec = self._dim(collection_id)
        blobs: dict[int, bytes] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks([int(i) for i in ids], 900):
                for i, v in conn.execute(select(images.c.id, images.c.vector).where(
                        images.c.collection_id == collection_id, images.c.id.in_(chunk))):
                    blobs[int(i)] = v
        return unpack_vectors([blobs[int(i)] for i in ids], rec)

    def iter_vectors(self, collection_id: int, min_seq: int = 0, chunk: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in chunks, for rows with ``seq > min_seq``, in id order."""
        dim = self._dim(collection_id)
        last = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(select(images.c.id, images.c.vector).where(
                    images.c.collection_id == collection_id, images.c.seq > min_seq, images.c.id > last,
                ).order_by(images.c.id).limit(chunk)).all()
            if not rows:
                return
            last = int(rows[-1][0])
            yield np.array([r[0] for r in rows], dtype=np.int64), unpack_vectors([r[1] for r in rows], dim)

    def all_vectors(self, collection_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every row, in id order."""
        parts = list(self.iter_vectors(collection_id))
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, self._dim(collection_id)), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def ids_newer_than(self, collection_id: int, seq: int) -> np.ndarray:
        """Ids of rows written after sequence number ``seq``."""
        with self.engine.connect() as conn:
            return np.fromiter(conn.execute(select(images.c.id).where(
                images.c.collection_id == collection_id, images.c.seq > seq)).scalars(), dtype=np.int64)

    def live_ids(self, collection_id: int) -> np.ndarray:
        with self.engine.connect() as conn:
            return np.fromiter(conn.execute(select(images.c.id).where(images.c.collection_id == collection_id)).scalars(),
                               dtype=np.int64)

    def _dim(self, collection_id: int) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(collections.c.dim).where(collections.c.id == collection_id)).scalar_one())

    # -- the writer's transaction ---------------------------------------------------------
    def write_batch(self, collection_id: int, *, new: Sequence[NewImage] = (), new_vectors: np.ndarray | None = None,
                    updated: Sequence[tuple[int, NewImage]] = (), updated_vectors: np.ndarray | None = None,
                    moved: Sequence[tuple[int, NewImage]] = (), touched: Sequence[tuple[int, NewImage]] = (),
                    removed: Sequence[int] = (), errors: Sequence[FileErrorRecord] = (),
                    cleared_errors: Sequence[str] = ()) -> tuple[list[int], int]:
        """Apply one batch of changes in one transaction; returns (ids of ``new``, the batch's seq)."""
        now = time.time()
        with self.engine.begin() as conn:
            seq = int(conn.execute(select(collections.c.next_seq).where(collections.c.id == collection_id)).scalar_one())
            conn.execute(update(collections).where(collections.c.id == collection_id).values(next_seq=seq + 1))
            if removed:
                for chunk in _chunks(list(removed), 900):
                    conn.execute(delete(images).where(images.c.collection_id == collection_id, images.c.id.in_(chunk)))
            for image_id, n in moved:
                conn.execute(update(images).where(images.c.id == image_id).values(path=n.path, size=n.size, mtime=n.mtime))
            if updated:
                for (image_id, n), blob in zip(updated, pack_vectors(updated_vectors)):
                    conn.execute(update(images).where(images.c.id == image_id).values(
                        path=n.path, size=n.size, mtime=n.mtime, content_hash=n.content_hash,
                        width=n.width, height=n.height, vector=blob, seq=seq, indexed_at=now))
            new_ids: list[int] = []
            if new:
                blobs = pack_vectors(new_vectors)
                rows = [dict(collection_id=collection_id, path=n.path, size=n.size, mtime=n.mtime,
                             content_hash=n.content_hash, width=n.width, height=n.height, vector=b,
                             seq=seq, indexed_at=now) for n, b in zip(new, blobs)]
                result = conn.execute(insert(images).returning(images.c.id, sort_by_parameter_order=True), rows)
                new_ids = [int(r[0]) for r in result]
            for image_id, n in touched:
                conn.execute(update(images).where(images.c.id == image_id).values(size=n.size, mtime=n.mtime))
            done_paths = [n.path for n in new] + [n.path for _, n in (*updated, *moved, *touched)]
            for chunk in _chunks(done_paths + list(cleared_errors), 900):
                conn.execute(delete(file_errors).where(file_errors.c.collection_id == collection_id,
                                                       file_errors.c.path.in_(chunk)))
            for err in errors:
                conn.execute(delete(file_errors).where(file_errors.c.collection_id == collection_id,
                                                       file_errors.c.path == err.path))
                conn.execute(insert(file_errors).values(collection_id=collection_id, path=err.path, size=err.size,
                                                        mtime=err.mtime, error=err.error, at=err.at))
        return new_ids, seq

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


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
