from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from searchengine.errors import CollectionNotFoundError, StoreError
from searchengine.store import (
    SCHEMA_VERSION,
    FileErrorRecord,
    NewImage,
    Store,
    as_stored,
    pack_vectors,
    text_hash,
    unpack_vectors,
)


def coll(store: Store, name: str = "c"):
    return store.create_collection(name, "local-dir:/m", 4, b"\0" * 16, "fp", "Flat")


def img(path: str, h: str = "h") -> NewImage:
    return NewImage(path=path, size=10, mtime=1.5, content_hash=h, width=3, height=2)


def test_schema_is_migrated_once(store):
    assert store.schema_version() == SCHEMA_VERSION
    again = Store(store.url)
    assert again.schema_version() == SCHEMA_VERSION
    with again.db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar() == SCHEMA_VERSION
    again.close()


def test_sqlite_uses_wal(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'wal.db'}")
    with store.db.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    store.close()


def test_a_newer_schema_is_refused(store):
    with store.db.begin() as conn:
        conn.execute(text("INSERT INTO schema_version (version) VALUES (999)"))
    with pytest.raises(StoreError, match="newer"):
        Store(store.url)


def test_float16_vectors_round_trip():
    v = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    back = unpack_vectors(pack_vectors(v), 8)
    np.testing.assert_array_equal(back, as_stored(v))
    np.testing.assert_allclose(back, v, atol=2e-3)
    assert unpack_vectors([], 8).shape == (0, 8)


def test_collections(store):
    with pytest.raises(CollectionNotFoundError):
        store.require_collection("c")
    rec = coll(store)
    assert store.require_collection("c") == rec and store.list_collections() == ["c"]


def test_write_batch_new_update_move_remove_and_errors(store):
    cid = coll(store).id
    vecs = np.eye(4, dtype=np.float32)[:3]
    ids, seq1 = store.write_batch(cid, new=[img("/a/1.jpg", "h1"), img("/a/2.jpg", "h2"), img("/b/3.jpg", "h3")],
                                  new_vectors=vecs, errors=[FileErrorRecord("/a/bad.jpg", "broken", 1, 1.0, 0.0)])
    assert len(ids) == 3 and ids == sorted(ids)
    np.testing.assert_array_equal(store.vectors_for(cid, ids[::-1]), vecs[::-1])
    assert {r.path for r in store.images_under(cid, ["/a"])} == {"/a/1.jpg", "/a/2.jpg"}
    assert store.images_under(cid, ["/a/1.jpg"])[0].id == ids[0]
    assert store.hash_index(cid) == [("h1", ids[0], "/a/1.jpg"), ("h2", ids[1], "/a/2.jpg"), ("h3", ids[2], "/b/3.jpg")]
    _, seq2 = store.write_batch(cid, moved=[(ids[0], img("/a/x/1.jpg", "h1"))], removed=[ids[2]],
                                updated=[(ids[1], img("/a/2.jpg", "h9"))], updated_vectors=np.eye(4, dtype=np.float32)[3:],
                                cleared_errors=["/a/bad.jpg"])
    assert seq2 == seq1 + 1 and store.current_seq(cid) == seq2
    assert store.image_by_path(cid, "/a/x/1.jpg").id == ids[0]
    assert store.count_images(cid) == 2 and store.count_errors(cid) == 0
    changed = [i for chunk, _ in store.iter_vectors(cid, min_seq=seq1) for i in chunk.tolist()]
    assert changed == [ids[1]]  # only the re-encoded row is newer than the first batch
    assert sorted(store.live_ids(cid).tolist()) == ids[:2]


def test_paths_are_unique_per_collection_and_a_new_row_at_a_known_path_replaces_it(store):
    """Another writer may have stored the path meanwhile: the row is upserted by (collection, path),
    keeps its id, gets the new content and loses what was derived from the old one."""
    cid = coll(store).id
    (first,), _ = store.write_batch(cid, new=[img("/a/1.jpg", "h1")], new_vectors=np.eye(4, dtype=np.float32)[:1])
    store.replace_tags(cid, [(first, "cat", 0.9)])
    (again,), _ = store.write_batch(cid, new=[img("/a/1.jpg", "h2")], new_vectors=np.eye(4, dtype=np.float32)[1:2])
    assert again == first and store.count_images(cid) == 1
    assert store.image_by_path(cid, "/a/1.jpg").content_hash == "h2"
    np.testing.assert_array_equal(store.vectors_for(cid, [first]), np.eye(4, dtype=np.float32)[1:2])
    assert store.attributes_of_images([first]) == {}  # the old content's tag is gone
    other = coll(store, "d").id
    (elsewhere,), _ = store.write_batch(other, new=[img("/a/1.jpg")], new_vectors=np.zeros((1, 4), np.float32))
    assert elsewhere != first and store.count_images(other) == 1


def test_store_errors_are_store_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="data directory"):
        Store(f"sqlite:///{tmp_path / 'file' / 'sub' / 'db.sqlite'}")
    with pytest.raises(StoreError, match="invalid database URL"):
        Store("nosuchdb://u@localhost/db")
    # without psycopg installed: the extra to install; with it: nothing listens on port 1
    with pytest.raises(StoreError, match=r"searchengine\[postgres\]|database error"):
        Store("postgresql+psycopg://u@127.0.0.1:1/db")


def test_big_sizes_fit(store):
    cid = coll(store).id
    big = NewImage(path="/huge.tif", size=5 * 2**30, mtime=1.0, content_hash="h", width=1, height=1)
    ids, _ = store.write_batch(cid, new=[big], new_vectors=np.zeros((1, 4), np.float32))
    assert store.images_by_ids(cid, ids)[ids[0]].size == 5 * 2**30


def test_a_version_1_store_is_migrated_with_its_rows_kept(store_url):
    """A database written by the first release opens, gains the v2 tables and keeps its images."""
    from sqlalchemy import create_engine, insert
    from sqlalchemy import text as sql

    from searchengine.store import migrations, schema

    url = store_url
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    with engine.begin() as conn:
        schema.metadata.create_all(conn, tables=[schema.schema_version])
        migrations.m001_initial(conn)
        conn.execute(insert(schema.schema_version).values(version=1))
        conn.execute(sql("INSERT INTO collections (id, name, model_spec, dim, fingerprint, fingerprint_id, index_factory,"
                         " index_note, next_seq, index_seq, created_at) VALUES (1, 'c', 'm', 4, :fp, 'fp', 'Flat', '',"
                         " 2, 1, 0)"), {"fp": b"\0"})
        conn.execute(sql("INSERT INTO images (id, collection_id, path, size, mtime, content_hash, width, height, vector,"
                         " seq, indexed_at) VALUES (7, 1, '/photos/Eiffel_Tower.JPEG', 10, 1.0, 'h', 3, 2, :v, 1, 0)"),
                     {"v": pack_vectors(np.ones((1, 4), np.float32))[0]})
    engine.dispose()
    migrated = Store(url)
    assert migrated.schema_version() == SCHEMA_VERSION == 5
    rec = migrated.require_collection("c")
    assert rec.text_index_seq == 0 and rec.ocr == 0
    row = migrated.images_by_ids(rec.id, [7])[7]
    assert row.path == "/photos/Eiffel_Tower.JPEG" and row.caption is None and row.source == "folder"
    assert migrated.filtered_ids(rec.id, _where("type = jpg")).tolist() == [7]
    assert [i for i, _ in migrated.keyword_search(rec.id, "eiffel", 5)] == [7]  # file names are keyword-searchable
    assert rec.caption_model is None  # version 3: tags and generated captions work on the migrated rows
    migrated.replace_tags(rec.id, [(7, "Landmark", 0.9)])
    assert migrated.filtered_ids(rec.id, _where("tag = landmark")).tolist() == [7]
    assert [i for i, _ in migrated.keyword_search(rec.id, "landmark", 5)] == [7]
    assert migrated.roots(rec.id) == ["/photos"]  # version 4: the folders of the images it holds
    migrated.add_roots(rec.id, ["/photos/2024", "/more"])  # a folder inside a known root adds nothing
    assert migrated.roots(rec.id) == ["/more", "/photos"]
    assert rec.index_checksum is None  # version 5: recorded at the index's next save
    migrated.set_index_state(rec.id, 1, "", checksum="ab" * 32)
    assert migrated.require_collection("c").index_checksum == "ab" * 32
    migrated.close()


def _where(expr: str):
    from searchengine.filters import parse_where
    from searchengine.store import filter_condition

    return filter_condition(parse_where(expr))


def test_attributes_texts_and_documents_follow_the_rows(store):
    cid = coll(store).id
    vec = {text_hash("a red bike"): np.eye(4, dtype=np.float32)[0]}
    new = NewImage(path="/p/bike.jpg", size=1, mtime=1.0, content_hash="h1", width=2, height=2, caption="a red bike",
                   attributes={"Brand": ["Acme"], "price": [49.0], "tags": ["sport", "city"]})
    (image_id,), _ = store.write_batch(cid, new=[new], new_vectors=np.eye(4, dtype=np.float32)[:1], text_vectors=vec)
    assert store.attributes_of_images([image_id]) == {image_id: {"brand": ["Acme"], "price": ["49"],
                                                                 "tags": ["sport", "city"]}}
    assert store.filtered_ids(cid, _where("brand = ACME and price < 50 and tags = city")).tolist() == [image_id]
    assert store.filtered_ids(cid, _where("price > 49 or brand != acme")).tolist() == []
    assert [i for i, _ in store.keyword_search(cid, "Acme bikes bike", 5)] == [image_id]
    assert store.count_texts(cid) == 1
    # a caption-less rewrite drops the caption's text row and keyword words; no vector needed
    store.write_batch(cid, touched=[(image_id, NewImage(path="/p/bike.jpg", size=1, mtime=2.0, content_hash="h1",
                                                        width=2, height=2))])
    assert store.count_texts(cid) == 0 and store.keyword_search(cid, "acme", 5) == []
    store.write_batch(cid, removed=[image_id])
    assert store.keyword_search(cid, "bike", 5) == [] and store.attributes_of_images([image_id]) == {}


def test_lookups_by_id_use_the_primary_key_not_a_collection_scan(tmp_path):
    """Hits are joined by id: without statistics SQLite once chose an index starting with the
    collection id instead, reading every row of the collection (100 ms a query at 1M images)."""
    from sqlalchemy import select

    from searchengine.store.database import ids_in as _ids_in
    from searchengine.store.rows import IMAGE_COLS as _IMAGE_COLS
    from searchengine.store.schema import images, texts

    store = Store(f"sqlite:///{tmp_path / 'plan.db'}")
    with store.db.connect() as conn:
        ids = list(range(5, 25))  # a page of hits: with 11 ids or more the planner preferred the scan
        for query in (select(*_IMAGE_COLS).where(_ids_in(images, 1, ids)),
                      select(texts.c.id, texts.c.text).where(_ids_in(texts, 1, ids))):
            sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
            plan = " ".join(str(row[-1]) for row in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
            assert "PRIMARY KEY" in plan and "collection_id=?" not in plan, plan
    store.close()
