from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import imagegen
from tests.support.tinymodel import make_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """``local-dir:`` spec of a tiny random open_clip model (seed 0)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory) -> str:
    """Same architecture, other random weights (seed 1)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model-b"), seed=1)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own data directory and no SEARCHENGINE_* settings from outside."""
    for key in list(os.environ):
        if key.startswith("SEARCHENGINE_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("SEARCHENGINE_HOME", str(home))
    monkeypatch.setenv("SEARCHENGINE_WORKERS", "0")
    return home


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder of 6 distinct small photos, one in a sub-folder."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        imagegen.photo(folder / f"img{i}.jpg", seed=i)
    imagegen.photo(folder / "sub" / "deep.png", seed=99)
    return folder


@pytest.fixture
def run(tiny_model, request):
    """``run(*paths, **kw)``: index into the test module's ``COLL`` collection with the tiny model."""
    from indexer import index_folder

    collection = getattr(request.module, "COLL", "test")

    def _run(*paths, **kw):
        return index_folder(list(paths), collection=collection, model=tiny_model, **kw)

    return _run


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """An empty database for a ``Store``, once on SQLite and once on PostgreSQL (see tests/support/pg.py)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'test.db'}"
        return
    from tests.support.pg import fresh_database

    with fresh_database() as url:
        yield url


@pytest.fixture
def store(store_url):
    """A new ``Store`` over ``store_url``: once on SQLite, once on PostgreSQL."""
    from searchengine.store import Store

    s = Store(store_url)
    yield s
    s.close()
