from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from searchengine.errors import CollectionNotFoundError, StoreError
from searchengine.store import SCHEMA_VERSION, FileErrorRecord, NewImage, Store, as_stored, pack_vectors, unpack_vectors


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'db' / 'test.db'}")
    yield s
    s.close()


def coll(store: Store, name: str = "c"):
    return store.create_collection(name, "local-dir:/m", 4, b"\0" * 16, "fp", "Flat")


def img(path: str, h: str = "h") -> NewImage:
    return NewImage(path=path, size=10, mtime=1.5, content_hash=h, width=3, height=2)


def test_schema_is_migrated_once_and_sqlite_uses_wal(store, tmp_path):
    assert store.schema_version() == SCHEMA_VERSION
    again = Store(store.url)
    assert again.schema_version() == SCHEMA_VERSION
    with again.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar() == SCHEMA_VERSION
    again.close()


def test_a_newer_schema_is_refused(store):
    with store.engine.begin() as conn:
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


def test_paths_are_unique_per_collection(store):
    cid = coll(store).id
    store.write_batch(cid, new=[img("/a/1.jpg")], new_vectors=np.zeros((1, 4), np.float32))
    with pytest.raises(StoreError):
        store.write_batch(cid, new=[img("/a/1.jpg")], new_vectors=np.zeros((1, 4), np.float32))
    other = coll(store, "d").id
    store.write_batch(other, new=[img("/a/1.jpg")], new_vectors=np.zeros((1, 4), np.float32))


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
