"""The frozen migrations end in the current schema: a database created by migration 1, with rows
in it, migrated to the latest version has exactly the tables, columns, keys, indexes and
constraints that creating the current schema fresh gives, and keeps its rows. On SQLite and
on PostgreSQL (see tests/support/pg.py)."""

from __future__ import annotations

import ast
import inspect as pyinspect
from typing import Iterator

import numpy as np
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection

from searchengine.store import SCHEMA_VERSION, Store, migrations, pack_vectors, schema
from searchengine.store.database import open_database


@pytest.fixture(params=["sqlite", "postgresql"])
def two_urls(request, tmp_path) -> Iterator[tuple[str, str]]:
    """Two empty databases of one kind: one to migrate, one to create fresh."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrated.db'}", f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    from tests.support.pg import fresh_database

    with fresh_database() as migrated, fresh_database() as fresh:
        yield migrated, fresh


def _schema(conn: Connection) -> dict[str, dict]:
    """Every table as SQLAlchemy's inspector sees it, in a form that compares by value."""
    insp = inspect(conn)
    out: dict[str, dict] = {}
    for table in sorted(insp.get_table_names()):
        columns = insp.get_columns(table)
        out[table] = {
            "column order": [c["name"] for c in columns],
            "columns": {c["name"]: (str(c["type"]), c["nullable"], c.get("default"), str(c.get("computed")))
                        for c in columns},
            "primary key": insp.get_pk_constraint(table)["constrained_columns"],
            "foreign keys": sorted((tuple(fk["constrained_columns"]), fk["referred_table"],
                                    tuple(fk["referred_columns"]), str(sorted(fk.get("options", {}).items())))
                                   for fk in insp.get_foreign_keys(table)),
            "indexes": sorted((ix["name"], tuple(ix["column_names"]), bool(ix["unique"]),
                               str(sorted(ix.get("dialect_options", {}).items())))
                              for ix in insp.get_indexes(table)),
            "unique": sorted((u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table)),
            "checks": sorted((c["name"], c["sqltext"]) for c in insp.get_check_constraints(table)),
        }
    if conn.dialect.name == "sqlite":  # an FTS5 table's options (its tokenizer) show only in its statement
        out["virtual tables"] = {"statements": conn.execute(text(
            "SELECT sql FROM sqlite_master WHERE sql LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name")).scalars().all()}
    return out


def _version_1_rows(url: str) -> None:
    """A database as the first release left it: migration 1 only, one collection, two images."""
    db = open_database(url)
    migrations.migrate(db, target=1)
    with db.begin() as conn:
        conn.execute(text("INSERT INTO collections (id, name, model_spec, dim, fingerprint, fingerprint_id,"
                          " index_factory, index_note, next_seq, index_seq, created_at)"
                          " VALUES (1, 'c', 'm', 4, :fp, 'fp', 'Flat', 'note', 3, 2, 5.0)"), {"fp": b"\1\2"})
        for image_id, path, vector in [(7, "/photos/a/Eiffel_Tower.JPEG", np.ones((1, 4))), (9, "/photos/b.png",
                                                                                             np.eye(4)[1:2])]:
            conn.execute(text("INSERT INTO images (id, collection_id, path, size, mtime, content_hash, width, height,"
                              " vector, seq, indexed_at) VALUES (:id, 1, :path, 10, 1.0, 'h', 3, 2, :v, 1, 0)"),
                         {"id": image_id, "path": path, "v": pack_vectors(vector.astype(np.float32))[0]})
        conn.execute(text("INSERT INTO file_errors (collection_id, path, size, mtime, error, at)"
                          " VALUES (1, '/photos/bad.jpg', 1, 1.0, 'broken', 2.0)"))
    with db.connect() as conn:
        assert migrations.current_version(conn) == 1
        assert "texts" not in inspect(conn).get_table_names()  # only migration 1 ran
    db.dispose()


def test_migrating_a_version_1_database_gives_the_current_schema_and_keeps_its_rows(two_urls):
    migrated_url, fresh_url = two_urls
    _version_1_rows(migrated_url)
    store = Store(migrated_url)  # opening migrates to the latest version
    assert store.schema_version() == SCHEMA_VERSION
    store.close()

    fresh = create_engine(fresh_url)
    with fresh.begin() as conn:
        schema.create_all(conn)
    with fresh.connect() as conn:
        want = _schema(conn)
    fresh.dispose()
    migrated = create_engine(migrated_url)
    with migrated.connect() as conn:
        got = _schema(conn)
        assert sorted(got) == sorted(want)
        for table in want:
            assert got[table] == want[table], table
        assert conn.execute(text("SELECT name, model_spec, dim, fingerprint, index_note, next_seq, index_seq,"
                                 " text_index_seq, ocr, caption_model, index_checksum FROM collections")).all() == [
            ("c", "m", 4, b"\1\2", "note", 3, 2, 0, 0, None, None)]
        images = conn.execute(text("SELECT id, path, vector, ext, source, caption, sidecar_sig FROM images"
                                   " ORDER BY id")).all()
        assert [(i, p, e, s, c, sig) for i, p, _, e, s, c, sig in images] == [
            (7, "/photos/a/Eiffel_Tower.JPEG", "jpg", "folder", None, ""), (9, "/photos/b.png", "png", "folder", None, "")]
        assert [bytes(v) for _, _, v, *_ in images] == pack_vectors(np.array([[1, 1, 1, 1], [0, 1, 0, 0]], np.float32))
        assert conn.execute(text("SELECT path, error FROM file_errors")).all() == [("/photos/bad.jpg", "broken")]
        assert sorted(conn.execute(text("SELECT path FROM roots")).scalars()) == ["/photos"]
    migrated.dispose()
    store = Store(migrated_url)  # and the rows are searchable through the store
    assert [i for i, _ in store.keyword_search(1, "eiffel", 5)] == [7]
    store.close()


def test_migrations_never_read_the_current_schema():
    """Each step declares what it adds as it was released: editing schema.py leaves history alone."""
    tree = ast.parse(pyinspect.getsource(migrations))
    from_schema = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and node.module == "schema" and node.level == 1 for alias in node.names}
    assert from_schema == {"schema_version"}  # the runner's own bookkeeping table
    assert len(migrations.MIGRATIONS) == SCHEMA_VERSION
    assert [m.__name__[:4] for m in migrations.MIGRATIONS] == [f"m{i:03d}" for i in range(1, SCHEMA_VERSION + 1)]
