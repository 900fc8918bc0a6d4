"""Concurrent writers meet on the store's unique keys (path, product id, content hash), on SQLite
and on PostgreSQL: a row that another transaction inserts meanwhile is updated, never a unique-key
error, and sequence numbers are taken atomically. Each race is set up deterministically: another
connection writes the same key and holds its transaction open until the store's call waits for it."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np
import pytest
from sqlalchemy import create_engine, insert, select, text, update

from searchengine.errors import StoreError
from searchengine.store import (
    SCHEMA_VERSION,
    FileErrorRecord,
    NewImage,
    ProductWrite,
    Store,
    collections,
    file_errors,
    generated,
    images,
    pack_vectors,
    products,
    roots,
    text_hash,
)
from searchengine.store.database import _sqlite_wal


def coll(store: Store, name: str = "c", spec: str = "local-dir:/m"):
    return store.create_collection(name, spec, 4, b"\0" * 16, "fp", "Flat")


def _waiting_for_a_lock(store: Store, future: Future) -> bool:
    """Whether the call now waits for another transaction (PostgreSQL says so; SQLite cannot: a moment)."""
    if store.db.dialect.name != "postgresql":
        time.sleep(0.5)
        return True
    with store.db.connect() as conn:
        return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                      " AND datname = current_database()")).scalar())


def race(store: Store, statements: list, call: Callable):
    """Run ``call`` while another connection's open transaction has run ``statements``; commit that
    transaction once the call waits for it, and return what the call returned (or raise its error)."""
    other = create_engine(store.url)
    try:
        with ThreadPoolExecutor(1) as pool, other.connect() as conn:
            tx = conn.begin()
            for statement in statements:
                conn.execute(statement)
            future = pool.submit(call)
            deadline = time.monotonic() + 20
            while not future.done() and not _waiting_for_a_lock(store, future) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not future.done(), "the call did not wait for the other transaction: no race was tested"
            tx.commit()
            return future.result(timeout=60)
    finally:
        other.dispose()


def new_image(path: str, h: str) -> NewImage:
    return NewImage(path=path, size=10, mtime=1.0, content_hash=h, width=3, height=2)


def test_a_product_inserted_meanwhile_is_updated(store):
    cid = coll(store).id
    title = "Red bike"
    write = ProductWrite(key="p1", title=title, description="fast", caption=None, attributes={"color": ["red"]},
                         fingerprint="f1", catalog="shop.csv", images=[])
    theirs = insert(products).values(collection_id=cid, product_key="p1", title="Old", catalog="shop.csv",
                                     fingerprint="f0", updated_at=0.0)
    (pid,) = race(store, [theirs], lambda: store.write_products(
        cid, [write], text_vectors={text_hash(title): np.eye(4, dtype=np.float32)[0]}))
    assert store.count_products(cid) == 1
    product = store.products_by_ids(cid, [pid])[pid]
    assert (product.key, product.title, product.fingerprint, product.attributes) == ("p1", title, "f1",
                                                                                     {"color": ["red"]})
    assert store.catalog_products(cid, "shop.csv") == {"p1": (pid, "f1")}


def test_an_image_path_inserted_meanwhile_is_updated_and_keeps_its_id(store):
    cid = coll(store).id
    theirs = insert(images).values(collection_id=cid, path="/a/1.jpg", size=1, mtime=0.0, content_hash="old",
                                   width=1, height=1, vector=pack_vectors(np.zeros((1, 4), np.float32))[0],
                                   seq=0, indexed_at=0.0)
    ids, _ = race(store, [theirs], lambda: store.write_batch(cid, new=[new_image("/a/1.jpg", "h1"),
                                                                       new_image("/a/2.jpg", "h2")],
                                                            new_vectors=np.eye(4, dtype=np.float32)[:2]))
    assert store.count_images(cid) == 2
    assert [store.images_by_ids(cid, ids)[i].content_hash for i in ids] == ["h1", "h2"]
    assert [r.path for r in store.all_images(cid)] == ["/a/1.jpg", "/a/2.jpg"]  # the first kept the older id
    np.testing.assert_array_equal(store.vectors_for(cid, ids), np.eye(4, dtype=np.float32)[:2])


def test_a_file_error_recorded_meanwhile_is_replaced(store):
    cid = coll(store).id
    theirs = insert(file_errors).values(collection_id=cid, path="/a/bad.jpg", size=1, mtime=0.0, error="old", at=0.0)
    race(store, [theirs], lambda: store.write_batch(cid, errors=[
        FileErrorRecord("/a/bad.jpg", "truncated", 5, 2.0, 3.0), FileErrorRecord("/a/bad.jpg", "broken", 6, 2.5, 4.0)]))
    assert [(e.path, e.error, e.size) for e in store.file_errors(cid)] == [("/a/bad.jpg", "broken", 6)]


def test_a_caption_generated_meanwhile_is_replaced(store):
    theirs = insert(generated).values(content_hash="h1", task="caption", model="blip", question="", text="old",
                                      created_at=0.0)
    race(store, [theirs], lambda: store.put_generated("caption", "blip", "", {"h1": "a dog", "h2": "a cat"}))
    assert store.generated_texts("caption", "blip", "", ["h1", "h2", "h3"]) == {"h1": "a dog", "h2": "a cat"}
    with store.db.connect() as conn:
        assert conn.execute(select(generated.c.id)).all().__len__() == 2


def test_a_root_added_meanwhile_is_kept(store):
    cid = coll(store).id
    theirs = insert(roots).values(collection_id=cid, path="/photos", added_at=0.0)
    race(store, [theirs], lambda: store.add_roots(cid, ["/photos", "/more"]))
    assert store.roots(cid) == ["/more", "/photos"]


def test_a_collection_created_meanwhile_is_returned_when_its_model_is_the_same(store):
    theirs = insert(collections).values(name="c", model_spec="local-dir:/m", dim=4, fingerprint=b"\0" * 16,
                                        fingerprint_id="fp", index_factory="Flat", created_at=0.0)
    rec = race(store, [theirs], lambda: coll(store))
    assert (rec.name, rec.model_spec, rec.created_at) == ("c", "local-dir:/m", 0.0)
    assert store.list_collections() == ["c"]
    with pytest.raises(StoreError, match="created meanwhile with the model local-dir:/m"):
        coll(store, spec="local-dir:/other")


def test_writers_never_share_a_sequence_number(store):
    """A writer that took a number and has not committed yet: the next writer takes the one after."""
    cid = coll(store).id
    theirs = update(collections).where(collections.c.id == cid).values(next_seq=collections.c.next_seq + 1)
    _, seq = race(store, [theirs], lambda: store.write_batch(cid, new=[new_image("/a/1.jpg", "h1")],
                                                             new_vectors=np.eye(4, dtype=np.float32)[:1]))
    assert seq == 2 and store.current_seq(cid) == 2


def test_threads_writing_the_same_keys_at_once_end_with_one_row_each(store):
    cid = coll(store).id
    start = threading.Barrier(4)

    def write(n: int):
        start.wait()
        store.write_batch(cid, new=[new_image("/same.jpg", f"h{n}")], new_vectors=np.eye(4, dtype=np.float32)[n:n + 1],
                          errors=[FileErrorRecord("/bad.jpg", f"error {n}", n, 1.0, 1.0)])
        store.put_generated("caption", "blip", "", {"h": f"caption {n}"})
        store.add_roots(cid, ["/photos"])
        return store.write_products(cid, [ProductWrite(key="p", title=None, description=None, caption=None,
                                                       attributes={}, fingerprint=str(n), catalog="c.csv", images=[])])

    with ThreadPoolExecutor(4) as pool:
        product_ids = list(pool.map(write, range(4)))
    assert len({tuple(p) for p in product_ids}) == 1 and store.count_products(cid) == 1
    assert store.count_images(cid) == 1 and store.count_errors(cid) == 1 and store.roots(cid) == ["/photos"]
    assert len(store.generated_texts("caption", "blip", "", ["h"])) == 1
    assert store.current_seq(cid) == 8  # two writes a thread, each its own number


def schema_versions_seen_opening_at_once(url: str, stores: int = 4) -> list[int]:
    """Open ``stores`` stores on ``url`` at the same moment (a barrier) and read their schema versions."""
    start = threading.Barrier(stores)

    def open_store(_):
        start.wait()
        s = Store(url)
        try:
            return s.schema_version()
        finally:
            s.close()

    with ThreadPoolExecutor(stores) as pool:
        return list(pool.map(open_store, range(stores)))


def test_stores_opened_at_once_on_a_new_database_migrate_it_once(store_url):
    assert schema_versions_seen_opening_at_once(store_url) == [SCHEMA_VERSION] * 4
    s = Store(store_url)
    with s.db.connect() as conn:
        assert conn.execute(text("SELECT version FROM schema_version ORDER BY version")).scalars().all() == \
            list(range(1, SCHEMA_VERSION + 1))
    s.close()


def test_many_stores_opening_new_sqlite_files_at_once_never_see_database_is_locked(tmp_path):
    """The first connections to a new SQLite file race to switch it to WAL; SQLite answers the
    loser "database is locked" without waiting, which one open in about fourteen used to raise."""
    for round_ in range(30):
        url = f"sqlite:///{tmp_path / str(round_) / 'test.db'}"
        assert schema_versions_seen_opening_at_once(url) == [SCHEMA_VERSION] * 4


class _LockedCursor:
    """A cursor whose journal-mode switch is refused ``refusals`` times, as a racing connection sees."""

    def __init__(self, refusals: int, message: str = "database is locked") -> None:
        self.refusals, self.message, self.mode, self.calls = refusals, message, "delete", []

    def execute(self, sql: str):
        self.calls.append(sql)
        if sql == "PRAGMA journal_mode=WAL":
            if self.refusals:
                self.refusals -= 1
                raise sqlite3.OperationalError(self.message)
            self.mode = "wal"
        return self

    def fetchone(self):
        return (self.mode,)


def test_the_wal_switch_retries_a_locked_database_and_skips_a_file_already_in_wal():
    cur = _LockedCursor(refusals=3)
    _sqlite_wal(cur)
    assert cur.mode == "wal" and cur.calls.count("PRAGMA journal_mode=WAL") == 4
    already = _LockedCursor(refusals=0)
    already.mode = "wal"
    _sqlite_wal(already)
    assert already.calls == ["PRAGMA journal_mode"]


def test_the_wal_switch_gives_up_after_its_patience_and_passes_other_errors_at_once():
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _sqlite_wal(_LockedCursor(refusals=10**6), patience=0.05)
    other = _LockedCursor(refusals=1, message="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        _sqlite_wal(other)
    assert other.calls.count("PRAGMA journal_mode=WAL") == 1
