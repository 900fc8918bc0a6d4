"""Incremental indexing where files trade places, change into each other, break and heal."""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from searchengine import SearchEngine
from searchengine.errors import ConfigError
from tests.support import imagegen

COLL = "edges"


def assert_each_file_finds_itself(folder):
    with SearchEngine.open(COLL) as engine:
        for path in sorted(folder.rglob("*.jpg")):
            hit = engine.search_image(path, k=1)[0]
            assert hit.score == pytest.approx(1.0, abs=2e-3), f"{path.name} has another file's vector"
            assert open(hit.path, "rb").read() == open(path, "rb").read()


@pytest.mark.parametrize("batch_size", ["1", "32"])
def test_swapped_files_get_each_others_vectors(run, photos, monkeypatch, batch_size):
    monkeypatch.setenv("SEARCHENGINE_BATCH_SIZE", batch_size)
    imagegen.photo(photos / "img0.jpg", seed=0, size=(64, 48))
    imagegen.photo(photos / "img1.jpg", seed=1, size=(80, 48))  # a different size, so (size, mtime) differ
    run(photos)
    os.rename(photos / "img0.jpg", photos / "tmp.jpg")
    os.rename(photos / "img1.jpg", photos / "img0.jpg")
    os.rename(photos / "tmp.jpg", photos / "img1.jpg")
    report = run(photos)
    assert (report.updated, report.encoded, report.moved) == (2, 0, 0)
    assert_each_file_finds_itself(photos)
    with SearchEngine.open(COLL) as engine:
        assert engine.search_image(photos / "img0.jpg", k=1)[0].width == 80


@pytest.mark.parametrize("batch_size", ["1", "32"])
def test_backup_then_edit_the_originals(run, photos, monkeypatch, batch_size):
    monkeypatch.setenv("SEARCHENGINE_BATCH_SIZE", batch_size)
    run(photos)
    shutil.copytree(photos, photos / "z_backup", copy_function=shutil.copy)
    for i in range(5):
        imagegen.photo(photos / f"img{i}.jpg", seed=500 + i, size=(70, 50))
    report = run(photos)
    assert (report.updated, report.added, report.encoded) == (5, 6, 5)
    assert_each_file_finds_itself(photos)


def test_a_file_that_becomes_another_files_content(run, photos):
    run(photos)
    shutil.copy(photos / "img1.jpg", photos / "img0.jpg")
    report = run(photos)
    assert (report.updated, report.encoded, report.duplicates) == (1, 0, 1)
    assert_each_file_finds_itself(photos)


def test_indexed_file_that_breaks_is_dropped_and_comes_back_when_healed(run, photos, tmp_path):
    run(photos)
    good = shutil.copy(photos / "img2.jpg", tmp_path / "good.jpg")
    data = (photos / "img2.jpg").read_bytes()
    (photos / "img2.jpg").write_bytes(data[: len(data) // 2])
    broken = run(photos)
    assert (broken.failed, broken.removed) == (1, 1)
    with SearchEngine.open(COLL) as engine:
        assert engine.status().images == 5 and str(photos / "img2.jpg") not in {
            h.path for h in engine.search_image(good, k=10)}
    assert run(photos).known_failures == 1  # not decoded again while unchanged
    shutil.copy(good, photos / "img2.jpg")
    healed = run(photos)
    assert (healed.added, healed.failed) == (1, 0)
    with SearchEngine.open(COLL) as engine:
        assert engine.errors() == [] and engine.status().images == 6


def test_unreadable_subfolder_does_not_remove_its_rows(run, photos, monkeypatch):
    run(photos)
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path) == str(photos / "sub"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    with monkeypatch.context() as patch:
        patch.setattr(os, "scandir", scandir)
        report = run(photos)
    assert (report.removed, report.failed) == (0, 1)
    again = run(photos)
    assert (again.added, again.encoded, again.unchanged) == (0, 0, 6)
    with SearchEngine.open(COLL) as engine:
        assert engine.errors() == []


def test_a_decoder_crash_costs_one_file(run, photos, monkeypatch):
    import indexer.pipeline as pipeline

    real = pipeline.safe_open

    def crashing(data, **kw):  # runs in the forked workers: a native crash on one file
        if real(data, **kw).size == (64, 48) and data == (photos / "img3.jpg").read_bytes():
            os.kill(os.getpid(), signal.SIGKILL)
        return real(data, **kw)

    monkeypatch.setattr(pipeline, "safe_open", crashing)
    monkeypatch.setenv("SEARCHENGINE_WORKERS", "2")
    report = run(photos)
    assert (report.added, report.failed) == (5, 1)
    assert report.errors[0].path == str(photos / "img3.jpg") and "crashed" in report.errors[0].error


def test_a_mistyped_path_creates_no_collection(run, tmp_path):
    with pytest.raises(ConfigError, match="no such"):
        run(tmp_path / "typo")
    from searchengine.config import Settings
    from searchengine.store import Store

    assert Store(Settings.from_env().database_url).list_collections() == []
