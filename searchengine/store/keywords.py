"""Keyword search over an image's words: file name, caption, product title and description,
attribute values (tags, brand, colour...) and the text read inside the image (OCR).

One document per image. SQLite ranks with FTS5's BM25; PostgreSQL with its full-text search
(``ts_rank_cd`` over a weighted ``tsvector``). The store keeps the documents in step with
the rows in the same transaction as every write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, Text, delete, func, insert, literal_column, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from ..errors import ConfigError

__all__ = ["Doc", "FIELDS", "create_schema", "replace", "remove", "search", "terms"]

#: The document's fields, with their weight in ranking.
FIELDS = {"name": 1.0, "title": 3.0, "caption": 2.0, "description": 1.0, "attrs": 2.0, "ocr": 1.5}
_PG_WEIGHTS = {"title": "A", "caption": "B", "attrs": "B", "ocr": "C", "name": "D", "description": "D"}

_meta = MetaData()
#: SQLite: an FTS5 table whose rowid is the image id.
fts = Table("docs_fts", _meta, Column("rowid", BigInteger, primary_key=True),
            Column("collection_id", Integer), *(Column(f, Text) for f in FIELDS))
#: PostgreSQL: a table with a generated, GIN-indexed tsvector.
pg_docs = Table("docs", _meta, Column("image_id", BigInteger, primary_key=True),
                Column("collection_id", Integer), *(Column(f, Text) for f in FIELDS))


@dataclass(frozen=True)
class Doc:
    image_id: int
    collection_id: int
    name: str = ""
    title: str = ""
    caption: str = ""
    description: str = ""
    attrs: str = ""
    ocr: str = ""


def _dialect(conn: Connection) -> str:
    name = conn.dialect.name
    if name not in ("sqlite", "postgresql"):
        raise ConfigError(f"keyword search needs SQLite or PostgreSQL, not {name}")
    return name


def create_schema(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        cols = ", ".join(["collection_id UNINDEXED", *FIELDS])
        conn.exec_driver_sql(f"CREATE VIRTUAL TABLE docs_fts USING fts5({cols}, "
                             "tokenize = 'unicode61 remove_diacritics 2')")
    elif conn.dialect.name == "postgresql":
        vector = " || ".join(f"setweight(to_tsvector('simple', coalesce({f}, '')), '{w}')"
                             for f, w in _PG_WEIGHTS.items())
        cols = ", ".join(f"{f} TEXT" for f in FIELDS)
        conn.exec_driver_sql(
            "CREATE TABLE docs (image_id BIGINT PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE, "
            f"collection_id INTEGER NOT NULL, {cols}, tsv tsvector GENERATED ALWAYS AS ({vector}) STORED)")
        conn.exec_driver_sql("CREATE INDEX ix_docs_tsv ON docs USING GIN (tsv)")


def _table(conn: Connection) -> tuple[Table, Column]:
    table = fts if _dialect(conn) == "sqlite" else pg_docs
    return table, (table.c.rowid if table is fts else table.c.image_id)


def remove(conn: Connection, image_ids: Sequence[int]) -> None:
    if conn.dialect.name not in ("sqlite", "postgresql") or not image_ids:
        return
    table, key = _table(conn)
    for start in range(0, len(image_ids), 900):
        conn.execute(delete(table).where(key.in_(list(image_ids[start : start + 900]))))


def replace(conn: Connection, docs: Sequence[Doc]) -> None:
    """Write these documents, replacing any an image had."""
    if conn.dialect.name not in ("sqlite", "postgresql") or not docs:
        return
    table, key = _table(conn)
    remove(conn, [d.image_id for d in docs])
    conn.execute(insert(table), [{key.name: d.image_id, "collection_id": d.collection_id,
                                  **{f: getattr(d, f) for f in FIELDS}} for d in docs])


def terms(query: str) -> list[str]:
    """The words of a query, lowercased, and each run of 2-3 adjacent words written together.

    Punctuation and operators are never passed on. The joined forms match text read in
    images, where OCR often drops the space between words ("WEST BOOKS" -> "westbooks").
    """
    words = re.findall(r"\w+", query.casefold())
    joined = ["".join(words[i : i + n]) for n in (2, 3) for i in range(len(words) - n + 1)]
    return list(dict.fromkeys(words + joined))


def search(conn: Connection, collection_id: int, query: str, limit: int,
           allowed: Callable[[ColumnElement], ColumnElement] | None = None) -> list[tuple[int, float]]:
    """(image id, score) of the documents matching any word of ``query``, best first.

    ``allowed`` builds a SQL condition on the image id column (filters), e.g. ``lambda c: c.in_(q)``.
    Scores are BM25 (SQLite) or ts_rank_cd (PostgreSQL): higher is better, comparable only
    within one query.
    """
    words = terms(query)
    if not words:
        return []
    table, key = _table(conn)
    if table is fts:
        weights = ", ".join(["0", *(str(w) for w in FIELDS.values())])
        score = -literal_column(f"bm25(docs_fts, {weights})")
        match = literal_column("docs_fts").op("MATCH")(" OR ".join(f'"{w}"' for w in words))
    else:
        tsquery = func.to_tsquery("simple", " | ".join(words))
        score = func.ts_rank_cd(literal_column("docs.tsv"), tsquery)
        match = literal_column("docs.tsv").op("@@")(tsquery)
    stmt = select(key, score.label("score")).where(match, table.c.collection_id == collection_id)
    if allowed is not None:
        stmt = stmt.where(allowed(key))
    rows = conn.execute(stmt.order_by(literal_column("score").desc(), key).limit(limit)).all()
    return [(int(i), float(s)) for i, s in rows]
