"""The database connection: engine creation from a URL, SQLite's pragmas (WAL, casefold), the
dialect shims the repositories share, and every database error raised as :class:`StoreError`."""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from sqlalchemy import Table, and_, create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Text

from ..errors import StoreError

__all__ = ["Database", "Repository", "open_database", "casefold", "insert_or", "ids_in", "chunks", "reason"]

T = TypeVar("T")


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


def reason(exc: SQLAlchemyError) -> str:
    """The first line of what the database said."""
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


class Database:
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
            raise StoreError(f"{what}: {reason(exc)}") from exc

    def raw_connect(self) -> Connection:
        """A connection the caller holds and closes; only a failure to open it becomes a StoreError."""
        try:
            return self._engine.connect()
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {reason(exc)}") from exc

    def dispose(self) -> None:
        self._engine.dispose()


def open_database(url: str) -> Database:
    """The database at ``url`` (a SQLite file's folder is created), its driver's absence said plainly."""
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
    return Database(engine)


class Repository:
    """The base of the store's repositories: they share one :class:`Database`."""

    db: Database


def insert_or(conn: Connection, table: Table, keys: Sequence[str], update: Sequence[str] = ()):
    """``INSERT ... ON CONFLICT (keys)``: rows whose unique key exists already get the new values of the
    ``update`` columns (nothing changes without any). A row another transaction inserted meanwhile is
    updated, not a unique-key error: upserts rely on the constraint, not on the isolation level."""
    name = conn.dialect.name
    if name == "postgresql":  # the dialects' modules load with the one in use (PostgreSQL's costs 50 ms)
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        raise StoreError(f"the metadata store needs SQLite or PostgreSQL, not {name}")
    stmt = dialect_insert(table)
    if not update:
        return stmt.on_conflict_do_nothing(index_elements=list(keys))
    return stmt.on_conflict_do_update(index_elements=list(keys), set_={c: stmt.excluded[c] for c in update})


def ids_in(table: Table, collection_id: int, ids: Sequence[int]) -> ColumnElement:
    """Rows of ``table`` with these primary keys in the collection, looked up by primary key.

    ``collection_id + 0`` keeps SQLite from reading an index that starts with the collection id
    instead (without statistics its planner did for 11 ids or more, scanning the whole collection: 100 ms a query at
    1M images); PostgreSQL plans it the same way, by the key."""
    return and_(table.c.id.in_(ids), (table.c.collection_id + 0) == collection_id)


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    """``items`` in consecutive slices of at most ``size`` (bounded statement parameters)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
