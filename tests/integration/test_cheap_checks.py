"""Cheap things are checked before a model loads (issue 17): an empty collection, a collection without
captions, a query file that is no image."""

from __future__ import annotations

import pytest

import searchengine.models.clip as clip
from indexer import index_folder, remove_paths
from searchengine import SearchEngine
from searchengine.errors import QueryError
from tests.support.fakemodel import ColorEncoder, color_folder

COLL = "cheap"


@pytest.fixture
def loads(monkeypatch, tmp_path):
    """A colour collection whose images were all removed again; counts model loads from then on."""
    count = {"n": 0}

    def load(spec, device="auto", precision="auto"):
        count["n"] += 1
        return ColorEncoder()

    monkeypatch.setattr(clip, "load_encoder", load)
    folder = color_folder(tmp_path / "colors")
    index_folder([folder], collection=COLL, model="fake:colors")
    with SearchEngine.open(COLL, writable=True) as engine:
        remove_paths([folder], engine=engine)
    count["n"] = 0
    return count


def test_searching_an_empty_collection_loads_no_model(loads):
    with SearchEngine.open(COLL) as engine:
        assert engine.search_text("red", k=3) == []
        assert engine.search(text="red", mode="hybrid") == []
        assert engine.search_texts(text="red") == []  # no captions or titles either
    assert loads["n"] == 0


def test_a_query_file_that_is_no_image_fails_before_the_model_loads(loads, tmp_path):
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not a picture")
    with SearchEngine.open(COLL) as engine:
        with pytest.raises(QueryError, match="cannot read the query image: not an image"):
            engine.search_image(str(bogus))
        with pytest.raises(QueryError, match="cannot read the query image"):
            engine.search_texts(image=str(bogus))
        with pytest.raises(QueryError, match="empty text query"):
            engine.search_texts(text="  ")
    assert loads["n"] == 0
