"""End to end on PostgreSQL: a folder and a catalog indexed with the tiny model into an engine whose
metadata store is a PostgreSQL database (``SEARCHENGINE_DB``), then searched by image, text,
keyword and filter. Skipped without ``TEST_POSTGRES_URL`` locally; fails without it under CI."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from indexer import import_catalog
from searchengine import SearchEngine
from searchengine.errors import WriterBusyError
from tests.support import imagegen
from tests.support.pg import fresh_database

COLL = "pg"


@pytest.fixture
def pg_url(monkeypatch):
    with fresh_database() as url:
        monkeypatch.setenv("SEARCHENGINE_DB", url)
        yield url


def rows(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def test_a_folder_indexed_into_postgresql_is_searched_and_kept_in_sync(pg_url, run, photos, _isolated_home):
    report = run(photos)
    assert (report.added, report.failed) == (6, 0)
    # the rows are in PostgreSQL, and no SQLite file was made
    stored = rows(pg_url, "SELECT path FROM images ORDER BY path")
    assert [p for (p,) in stored] == sorted(str(p) for p in photos.rglob("*.*"))
    assert not list(_isolated_home.rglob("*.db")) and not list(_isolated_home.rglob("*.sqlite*"))

    with SearchEngine.open(COLL) as engine:
        for path in sorted(photos.rglob("*.*")):
            assert engine.search_image(path, k=3)[0].path == str(path)
        assert len(engine.search_text("a photo", k=10)) == 6
        assert [h.path for h in engine.search("deep", mode="keyword", k=5)] == [str(photos / "sub" / "deep.png")]
        assert [h.path for h in engine.search_text("a photo", k=10, filters="type = png")] == \
            [str(photos / "sub" / "deep.png")]
        before = engine.search_image(photos / "img0.jpg", k=1)[0]

    os.rename(photos / "img0.jpg", photos / "renamed.jpg")
    (photos / "img1.jpg").unlink()
    imagegen.photo(photos / "new.jpg", seed=42)
    again = run(photos)
    assert (again.moved, again.removed, again.added, again.unchanged) == (1, 1, 1, 4)
    with SearchEngine.open(COLL) as engine:
        hit = engine.search_image(photos / "renamed.jpg", k=1)[0]
        assert (hit.id, hit.path) == (before.id, str(photos / "renamed.jpg"))
        assert engine.status().images == 6
        assert str(photos / "img1.jpg") not in {h.path for h in engine.search_text("a photo", k=10)}
    assert rows(pg_url, "SELECT count(*) FROM images")[0][0] == 6


def test_a_catalog_imported_into_postgresql_rolls_up_to_products(pg_url, tiny_model, tmp_path):
    shop = tmp_path / "shop"
    (shop / "img").mkdir(parents=True)
    for i in range(4):
        imagegen.photo(shop / "img" / f"{i}.jpg", seed=10 + i)
    (shop / "catalog.csv").write_text(
        "id,images,title,category,price\n"
        "p1,img/0.jpg|img/1.jpg,Red running shoe,shoes,30\n"
        "p2,img/2.jpg,Blue canvas bag,bags,80\n"
        "p3,img/3.jpg,Green sandal,shoes,45.5\n", encoding="utf-8")
    report = import_catalog(shop / "catalog.csv", collection=COLL, model=tiny_model)
    assert report.added == 3
    again = import_catalog(shop / "catalog.csv", collection=COLL)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 3)
    assert rows(pg_url, "SELECT product_key FROM products ORDER BY product_key") == [("p1",), ("p2",), ("p3",)]

    with SearchEngine.open(COLL) as engine:
        hits = engine.search_image(shop / "img" / "1.jpg", k=10)
        assert [h.product_id for h in hits][0] == "p1" and sorted(h.product_id for h in hits) == ["p1", "p2", "p3"]
        cheap_shoes = engine.search_text("a shoe", k=10, filters="category = shoes and price < 40")
        assert [h.product_id for h in cheap_shoes] == ["p1"]
        assert [h.product_id for h in engine.search("sandal", mode="keyword", k=5)] == ["p3"]


def test_index_and_search_with_sqlite_default_is_unaffected(run, photos, monkeypatch):
    """The same run without SEARCHENGINE_DB keeps its SQLite file in the data directory."""
    monkeypatch.delenv("SEARCHENGINE_DB", raising=False)
    assert run(photos).added == 6
    home = Path(os.environ["SEARCHENGINE_HOME"])
    assert list(home.rglob("*.db")) or list(home.rglob("*.sqlite*"))


def test_one_writer_per_collection_across_data_directories(pg_url, run, photos, tmp_path):
    """Two data directories (two machines, say) sharing one PostgreSQL database: the lock file of
    each is its own, so the database's advisory lock is what keeps the second writer out."""
    run(photos)
    other_home = tmp_path / "other-home"
    with SearchEngine.open(COLL, writable=True):
        with pytest.raises(WriterBusyError, match=r"being written by another process through the same database "
                                                 r"\(postgresql\+psycopg://"):
            SearchEngine.open(COLL, data_dir=other_home, writable=True)
        assert not (other_home / "collections" / COLL / "writer.lock").read_text()  # released again
        with SearchEngine.open(COLL, data_dir=other_home) as reader:  # readers take no lock
            assert len(reader.search("a photo", k=3)) == 3
    with SearchEngine.open(COLL, data_dir=other_home, writable=True) as writer:  # free once closed
        assert writer.index.ntotal == 6


_HOLDER = """
import sys, time
from searchengine import SearchEngine
engine = SearchEngine.open(sys.argv[1], writable=True)
print("holding", flush=True)
time.sleep(600)
"""


def test_a_killed_writer_leaves_no_database_lock(pg_url, run, photos, tmp_path):
    import signal
    import subprocess
    import sys

    run(photos)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, COLL], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(WriterBusyError):
            SearchEngine.open(COLL, data_dir=tmp_path / "other-home", writable=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 30  # the server notices the dead connection at once on loopback
    while True:
        try:
            with SearchEngine.open(COLL, data_dir=tmp_path / "other-home", writable=True) as writer:
                assert writer.index.ntotal == 6
            break
        except WriterBusyError:
            assert time.monotonic() < deadline, "the database lock outlived its killed holder"
            time.sleep(0.2)
