"""SearchEngine.reopen() and .writer(): engines over one collection share the models one loaded,
so a process loads each model once (the server's swaps and its background writers)."""

from __future__ import annotations

import threading

import pytest

import searchengine.models.clip as clip
from indexer import index_folder
from searchengine import SearchEngine
from searchengine.errors import WriterBusyError
from tests.support.fakemodel import ColorEncoder, color_folder

COLL = "reopen"


@pytest.fixture
def loads(monkeypatch, tmp_path):
    """Counts model loads; the colour folder is indexed into ``COLL``."""
    count = {"n": 0}
    lock = threading.Lock()

    def load(spec, device="auto", precision="auto"):
        with lock:
            count["n"] += 1
        return ColorEncoder()

    monkeypatch.setattr(clip, "load_encoder", load)
    index_folder([color_folder(tmp_path / "colors")], collection=COLL, model="fake:colors")
    count["n"] = 0
    return count


def test_a_reopened_engine_and_a_writer_share_the_readers_model(loads, tmp_path):
    with SearchEngine.open(COLL) as reader:
        assert reader.search_text("red", k=1)[0].path.endswith("red.png")
        assert loads["n"] == 1
        again = reader.reopen()
        assert again.search_text("blue", k=1)[0].path.endswith("blue.png")
        assert again.encoder is reader.encoder and again.refresh_every is None
        writer = reader.writer()
        try:
            assert writer.writable and writer.store is not reader.store
            assert writer.encoder is reader.encoder
            with pytest.raises(WriterBusyError):
                reader.writer()  # one writer per collection
        finally:
            writer.close()
        assert loads["n"] == 1


def test_a_writer_made_before_any_load_loads_once_for_both(loads):
    with SearchEngine.open(COLL) as reader:
        writer = reader.writer()
        try:
            barrier = threading.Barrier(2)

            def use(engine):
                barrier.wait()
                assert engine.encoder is not None

            threads = [threading.Thread(target=use, args=(e,)) for e in (reader, writer)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert loads["n"] == 1 and writer.encoder is reader.encoder
        finally:
            writer.close()
