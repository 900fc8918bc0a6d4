"""Index a folder, then search it: the incremental contract end to end with a tiny random model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer import index_folder
from searchengine import SearchEngine
from searchengine.errors import CollectionNotFoundError, QueryError
from tests.support import imagegen

COLL = "test"


def open_engine() -> SearchEngine:
    return SearchEngine.open(COLL)


def top(engine: SearchEngine, image: Path, k: int = 3):
    return engine.search_image(image, k=k)


def test_index_then_search_finds_each_image_first_with_itself(run, photos):
    report = run(photos)
    assert (report.added, report.failed, report.encoded) == (6, 0, 6)
    with open_engine() as engine:
        for path in sorted(photos.rglob("*.*")):
            hits = top(engine, path)
            assert hits[0].path == str(path)
            assert hits[0].score == pytest.approx(1.0, abs=2e-3)
            assert hits[0].score > hits[1].score
        text_hits = engine.search_text("a dog on a beach", k=10)
        assert len(text_hits) == 6
        assert [h.score for h in text_hits] == sorted((h.score for h in text_hits), reverse=True)


def test_reindex_of_unchanged_folder_encodes_nothing(run, photos):
    run(photos)
    again = run(photos)
    assert (again.encoded, again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 0, 6)


def test_rename_and_move_keep_the_id(run, photos):
    run(photos)
    with open_engine() as engine:
        before = top(engine, photos / "img0.jpg")[0]
    os.rename(photos / "img0.jpg", photos / "renamed.jpg")
    shutil.move(str(photos / "img1.jpg"), str(photos / "sub" / "moved.jpg"))
    report = run(photos)
    assert (report.moved, report.encoded, report.removed, report.added) == (2, 0, 0, 0)
    with open_engine() as engine:
        hit = top(engine, photos / "renamed.jpg")[0]
        assert (hit.id, hit.path) == (before.id, str(photos / "renamed.jpg"))
        assert engine.status().images == 6
        paths = {h.path for h in engine.search_text("anything", k=10)}
    assert str(photos / "img0.jpg") not in paths and str(photos / "sub" / "moved.jpg") in paths


def test_deleted_file_is_removed_from_results(run, photos, tmp_path):
    run(photos)
    query = shutil.copy(photos / "img2.jpg", tmp_path / "query.jpg")
    os.unlink(photos / "img2.jpg")
    report = run(photos)
    assert report.removed == 1
    with open_engine() as engine:
        hits = engine.search_image(query, k=10)
        assert str(photos / "img2.jpg") not in {h.path for h in hits}
        assert len(hits) == 5
        assert engine.status().index_vectors == 5


def test_changed_content_is_reencoded_in_place(run, photos):
    run(photos)
    with open_engine() as engine:
        old_id = top(engine, photos / "img3.jpg")[0].id
    imagegen.photo(photos / "img3.jpg", seed=123, size=(80, 60))
    os.utime(photos / "img3.jpg", (1_700_000_000, 1_700_000_000))
    report = run(photos)
    assert (report.updated, report.encoded, report.unchanged) == (1, 1, 5)
    with open_engine() as engine:
        hit = top(engine, photos / "img3.jpg")[0]
        assert (hit.id, hit.width, hit.height) == (old_id, 80, 60)
        assert hit.score == pytest.approx(1.0, abs=2e-3)


def test_touched_file_with_same_content_is_not_reencoded(run, photos):
    run(photos)
    os.utime(photos / "img4.jpg", (1_600_000_000, 1_600_000_000))
    report = run(photos)
    assert (report.encoded, report.updated, report.unchanged) == (0, 0, 6)
    assert run(photos).unchanged == 6  # the new mtime was recorded


def test_identical_content_is_encoded_once(run, photos):
    shutil.copy(photos / "img0.jpg", photos / "copy-a.jpg")
    report = run(photos)
    assert (report.added, report.encoded, report.duplicates) == (7, 6, 1)
    shutil.copy(photos / "img1.jpg", photos / "sub" / "copy-b.jpg")
    report = run(photos)
    assert (report.added, report.encoded, report.duplicates) == (1, 0, 1)
    with open_engine() as engine:
        hits = top(engine, photos / "img1.jpg", k=2)
        assert {h.path for h in hits} == {str(photos / "img1.jpg"), str(photos / "sub" / "copy-b.jpg")}
        assert hits[0].score == pytest.approx(hits[1].score, abs=1e-6)
        assert (hits[1].width, hits[1].height) == (64, 48)


def test_bad_files_become_recorded_errors_and_the_rest_indexes(run, photos):
    bad = photos / "bad"
    imagegen.truncated_jpeg(bad / "truncated.jpg")
    imagegen.truncated_png(bad / "truncated.png")
    imagegen.zero_byte(bad / "empty.jpg")
    imagegen.text_as_jpg(bad / "notes.jpg")
    imagegen.png_bomb(bad / "bomb.png")
    (bad / "readme.txt").write_text("not an image extension: ignored")
    report = run(photos)
    assert (report.added, report.failed) == (6, 5)
    failed = {Path(e.path).name: e.error for e in report.errors}
    assert set(failed) == {"truncated.jpg", "truncated.png", "empty.jpg", "notes.jpg", "bomb.png"}
    assert "too large" in failed["bomb.png"] and "empty" in failed["empty.jpg"]
    with open_engine() as engine:
        assert engine.status().errors == 5
        assert {Path(e.path).name for e in engine.errors()} == set(failed)
    again = run(photos)
    assert (again.failed, again.known_failures, again.encoded) == (0, 5, 0)
    assert run(photos, retry_errors=True).failed == 5
    imagegen.photo(bad / "notes.jpg", seed=7)  # fixed: now a real image
    fixed = run(photos)
    assert (fixed.added, fixed.known_failures) == (1, 4)
    os.unlink(bad / "empty.jpg")
    run(photos)
    with open_engine() as engine:
        assert {Path(e.path).name for e in engine.errors()} == {"truncated.jpg", "truncated.png", "bomb.png"}


def test_odd_formats_and_modes_index(run, tmp_path):
    folder = tmp_path / "odd"
    imagegen.exif_rotated_jpeg(folder / "rotated.jpg", orientation=6, size=(64, 32))
    imagegen.cmyk_jpeg(folder / "cmyk.jpg")
    imagegen.palette_alpha_png(folder / "palette.png")
    imagegen.la_png(folder / "la.png")
    imagegen.rgba_png(folder / "rgba.png")
    imagegen.png16(folder / "deep.png")
    imagegen.animated_gif(folder / "anim.gif")
    imagegen.webp(folder / "pic.webp")
    imagegen.bmp(folder / "pic.bmp")
    imagegen.tiff(folder / "pic.tiff")
    imagegen.mpo(folder / "phone.jpg")
    imagegen.broken_exif_jpeg(folder / "broken-exif.jpg")
    report = run(folder)
    assert (report.added, report.failed) == (12, 0), report.errors
    with open_engine() as engine:
        hit = top(engine, folder / "rotated.jpg")[0]
        assert hit.path.endswith("rotated.jpg") and (hit.width, hit.height) == (32, 64)


def test_interrupted_run_keeps_committed_batches_and_the_next_run_finishes(run, photos, monkeypatch):
    from indexer.writer import Writer

    calls = {"n": 0}
    real_write = Writer.write

    def flaky(self, batch, *rest):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_write(self, batch, *rest)

    monkeypatch.setenv("SEARCHENGINE_BATCH_SIZE", "2")
    monkeypatch.setattr(Writer, "write", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(photos)
    monkeypatch.setattr(Writer, "write", real_write)
    with open_engine() as engine:
        assert engine.status().images == 2
    report = run(photos)
    assert (report.added, report.unchanged, report.encoded) == (4, 2, 4)
    with open_engine() as engine:
        assert engine.status().images == 6 and engine.index.ntotal == 6
        assert sorted(engine.index.ids().tolist()) == sorted(engine.store.live_ids(engine.collection.id).tolist())


def test_index_file_out_of_step_with_the_store_is_reconciled_on_open(run, photos, tmp_path):
    run(photos)
    with open_engine() as engine:
        index_path = engine.index_path
    old_index = shutil.copy(index_path, tmp_path / "old.faiss")
    imagegen.photo(photos / "new.jpg", seed=55)
    os.unlink(photos / "img0.jpg")
    run(photos)
    shutil.copy(old_index, index_path)  # as if the last save never happened
    with open_engine() as engine:
        live = sorted(engine.store.live_ids(engine.collection.id).tolist())
        assert sorted(engine.index.ids().tolist()) == live
        assert top(engine, photos / "new.jpg")[0].path == str(photos / "new.jpg")
    index_path.unlink()  # a lost index is rebuilt from the store
    with open_engine() as engine:
        assert sorted(engine.index.ids().tolist()) == live


def test_an_unchanged_collection_opens_without_reading_its_id_sets(run, photos, monkeypatch):
    """Nothing written since the index was saved: open compares a count, not every id."""
    from searchengine.index import VectorIndex
    from searchengine.store import Store

    run(photos)

    def refuse(*args, **kwargs):
        raise AssertionError("the id sets were read")

    monkeypatch.setattr(Store, "live_ids", refuse)
    monkeypatch.setattr(VectorIndex, "ids", refuse)
    with open_engine() as engine:
        assert engine.index.ntotal == 6 and engine.text_index.ntotal == 0
        assert top(engine, photos / "img3.jpg")[0].path == str(photos / "img3.jpg")


def test_rows_deleted_without_a_new_sequence_number_are_still_reconciled(run, photos):
    """Inserts and updates always take a sequence number; a delete that did not (by hand, or by an
    older version) changes the count, and open then compares the id sets."""
    from sqlalchemy import text

    run(photos)
    with open_engine() as engine:
        victim = int(engine.store.live_ids(engine.collection.id)[0])
        with engine.store.db.begin() as conn:
            conn.execute(text("DELETE FROM images WHERE id = :id"), {"id": victim})
    with open_engine() as engine:
        ids = engine.index.ids().tolist()
        assert len(ids) == 5 and victim not in ids
        assert sorted(ids) == sorted(engine.store.live_ids(engine.collection.id).tolist())


def test_an_interruption_between_the_commit_and_the_index_update_is_caught_on_the_next_open(run, photos,
                                                                                            monkeypatch):
    """The save after an interrupted run must not claim the index holds a batch it never got: it
    records the sequence number the index is complete to, so the next open compares the id sets."""
    from indexer.writer import Writer

    monkeypatch.setenv("SEARCHENGINE_BATCH_SIZE", "2")
    real_update, calls = Writer._update_index, []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # batch 2 is committed in the store, not in the index
        return real_update(self, *args)

    monkeypatch.setattr(Writer, "_update_index", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(photos)
    monkeypatch.setattr(Writer, "_update_index", real_update)
    with open_engine() as engine:
        rec, live = engine.collection, sorted(engine.store.live_ids(engine.collection.id).tolist())
        assert len(live) == 4 and rec.index_seq < engine.store.current_seq(rec.id)
        assert sorted(engine.index.ids().tolist()) == live  # the open found and added batch 2


def test_a_file_that_turns_unreadable_leaves_the_index_of_the_run_that_found_it(run, photos, tiny_model):
    """A batch whose only change is an indexed file that became unreadable still removes its id
    from the index in memory (and so from the index saved)."""
    run(photos)
    (photos / "img2.jpg").write_bytes(b"not an image any more")
    with SearchEngine.open(COLL, writable=True) as engine:
        before = {h.path: h.id for h in engine.search_text("x", k=6)}
        report = index_folder(photos, engine=engine)
        assert (report.failed, report.removed) == (1, 1)
        gone = before[str(photos / "img2.jpg")]
        assert gone not in engine.index.ids().tolist() and engine.index.ntotal == 5
    with open_engine() as engine:
        assert engine.index.ntotal == 5 and engine.collection.index_seq == engine.store.current_seq(engine.collection.id)


def test_rebuilt_index_gives_the_same_results(run, photos):
    run(photos)
    with open_engine() as engine:
        before = engine.search_text("a red house", k=6)
        assert engine.rebuild_index() == 6
        after = engine.search_text("a red house", k=6)
    assert [h.id for h in before] == [h.id for h in after]
    np.testing.assert_allclose([h.score for h in before], [h.score for h in after], atol=1e-6)


def test_worker_processes_give_the_same_vectors_as_in_process(tiny_model, photos, monkeypatch):
    index_folder(photos, collection="inproc", model=tiny_model)
    monkeypatch.setenv("SEARCHENGINE_WORKERS", "2")
    report = index_folder(photos, collection="pool", model=tiny_model)
    assert report.added == 6
    vecs = {}
    for name in ("inproc", "pool"):
        with SearchEngine.open(name) as engine:
            hits = engine.search_text("sunset", k=6)
            vecs[name] = {h.path: h.score for h in hits}
    assert vecs["inproc"].keys() == vecs["pool"].keys()
    for path, score in vecs["inproc"].items():
        assert vecs["pool"][path] == pytest.approx(score, abs=1e-5)


def test_index_factories_including_ones_that_need_training_or_cannot_remove(tiny_model, photos):
    index_folder(photos, collection="hnsw", model=tiny_model, index_factory="HNSW16")
    os.unlink(photos / "img0.jpg")
    assert index_folder(photos, collection="hnsw").removed == 1
    with SearchEngine.open("hnsw") as engine:
        st = engine.status()
        assert (st.index_type, st.index_vectors) == ("IndexHNSWFlat", 5)
    index_folder(photos, collection="ivf", model=tiny_model, index_factory="IVF64,Flat")
    with SearchEngine.open("ivf") as engine:
        st = engine.status()
        assert st.index_type == "IndexFlatIP" and "Flat" in st.index_note  # too few vectors to train 64 lists
        assert len(engine.search_text("x", k=5)) == 5
        assert engine.rebuild_index("IVF2,Flat") == 5
        assert (engine.status().index_type, engine.status().index_note) == ("IndexIVFFlat", "")


def test_empty_folder_and_empty_collection(run, tmp_path):
    (tmp_path / "empty").mkdir()
    report = run(tmp_path / "empty")
    assert (report.added, report.failed) == (0, 0)
    with open_engine() as engine:
        assert engine.search_text("anything") == []


def test_missing_collection_and_bad_queries(run, photos, tmp_path):
    with pytest.raises(CollectionNotFoundError, match="searchengine index"):
        SearchEngine.open("nope")
    run(photos)
    with open_engine() as engine:
        with pytest.raises(QueryError):
            engine.search_text("   ")
        with pytest.raises(QueryError, match="query image"):
            engine.search_image(imagegen.text_as_jpg(tmp_path / "q.jpg"))
        with pytest.raises(QueryError):
            engine.search_text("x", k=0)


def test_symlink_loop_and_special_files_do_not_hang(run, photos):
    os.symlink(photos, photos / "sub" / "loop")
    os.mkfifo(photos / "pipe.jpg")
    report = run(photos)
    assert (report.added, report.failed) == (6, 1)
    assert [(os.path.basename(e.path), e.error) for e in report.errors] == [
        ("pipe.jpg", "not a regular file (a named pipe): not read")]


def test_two_roots_are_independent(run, photos, tmp_path):
    other = tmp_path / "other"
    imagegen.photo(other / "o.jpg", seed=42)
    run(photos)
    run(other)
    with open_engine() as engine:
        assert engine.status().images == 7  # indexing `other` did not sweep `photos`


def test_collection_refuses_another_model_and_changed_weights(tiny_model, other_tiny_model, photos, tmp_path):
    from searchengine.errors import ModelMismatchError

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model.split(":", 1)[1], model_dir)
    index_folder(photos, collection=COLL, model=f"local-dir:{model_dir}")
    with pytest.raises(ModelMismatchError, match="was built with model"):
        SearchEngine.open(COLL, model=other_tiny_model)
    with SearchEngine.open(COLL, model=f"local-dir:{model_dir}") as engine:  # the same model is fine
        assert engine.search_text("x", k=1)
    shutil.copy(Path(other_tiny_model.split(":", 1)[1]) / "open_clip_model.safetensors", model_dir)
    with SearchEngine.open(COLL) as engine:
        with pytest.raises(ModelMismatchError, match="fingerprint"):
            engine.search_text("x")


def test_heic_photos_index_when_pillow_heif_is_installed(run, tmp_path):
    import pillow_heif  # in the dev extra

    folder = tmp_path / "phone"
    pillow_heif.from_pillow(imagegen.photo_image(5, size=(60, 40))).save(folder.mkdir() or folder / "IMG_0001.HEIC")
    report = run(folder)
    assert (report.added, report.failed) == (1, 0)
    with open_engine() as engine:
        hit = engine.search_image(folder / "IMG_0001.HEIC", k=1)[0]
        assert (hit.width, hit.height) == (60, 40) and hit.score == pytest.approx(1.0, abs=2e-3)


def test_many_single_files_as_roots(run, tmp_path):
    files = [imagegen.photo(tmp_path / "flat" / f"f{i:04d}.jpg", seed=i, size=(16, 12)) for i in range(450)]
    assert run(*files).added == 450
    assert run(*files).unchanged == 450


def test_an_index_file_the_engine_did_not_write_is_never_read(run, photos, monkeypatch):
    """faiss's reader is native code: a swapped or tampered index file is refused by its checksum
    (recorded at every save) and rebuilt from the stored vectors, without being parsed."""
    import faiss

    from searchengine._fs import file_checksum
    from searchengine.index.maintenance import INDEX_FILE

    run(photos)
    with SearchEngine.open(COLL) as engine:
        path = engine.settings.collection_dir / INDEX_FILE
        assert engine.collection.index_checksum == file_checksum(path)
        good = engine.search(vector=engine.store.all_vectors(engine.collection.id)[1][0], k=1)[0].id
    hostile = faiss.IndexIDMap2(faiss.IndexFlatIP(engine.collection.dim))  # a valid index, not ours
    faiss.write_index(hostile, str(path))
    parsed = []
    real_read = faiss.read_index
    monkeypatch.setattr(faiss, "read_index", lambda p, *a: parsed.append(p) or real_read(p, *a))
    with SearchEngine.open(COLL, writable=True) as engine:
        assert parsed == []  # refused before faiss saw it
        assert engine.index.ntotal == 6  # rebuilt from the store
        assert engine.search(vector=engine.store.all_vectors(engine.collection.id)[1][0], k=1)[0].id == good
        assert engine.collection.index_checksum == file_checksum(path)
