"""The ``auto`` index: exact below a size, a tuned inverted file above, re-chosen as the collection grows."""

from __future__ import annotations

import numpy as np
import pytest

from searchengine.index import FALLBACK_NOTE, VectorIndex, choose_factory, memory, needs_rechoice
from searchengine.index import factory as policy

DIM = 64


def clustered(n: int, seed: int, clusters: int = 200) -> np.ndarray:
    """Unit vectors in a cone around a common direction with cluster structure, like image embeddings."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(12345).standard_normal((clusters, DIM)).astype(np.float32)
    common = np.random.default_rng(54321).standard_normal(DIM).astype(np.float32)
    x = common + 0.9 * centers[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)


def recall_at_10(index: VectorIndex, data: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> float:
    exact = np.argsort(-(queries @ data.T), axis=1)[:, :10]
    _, found = index.search(queries, 10)
    return float(np.mean([len(set(ids[e]) & set(f)) / 10 for e, f in zip(exact, found)]))


def test_choice_by_size():
    assert choose_factory(10) == "Flat"
    assert choose_factory(policy.AUTO_EXACT_LIMIT - 1) == "Flat"
    assert choose_factory(1_000_000) == "IVF1024,SQfp16"
    assert choose_factory(10_000_000) == "IVF4096,SQfp16"


def test_small_collections_search_exactly():
    data = clustered(500, 0)
    index = VectorIndex.build("auto", DIM, np.arange(500), data)
    assert (index.factory, index.chosen, index.inner_type, index.nprobe) == ("auto", "Flat", "IndexFlatIP", None)
    assert index.note == f"auto: exact Flat search below {policy.AUTO_EXACT_LIMIT:,} vectors"


def test_large_collections_get_an_ivf_tuned_to_the_target_recall(monkeypatch, tmp_path):
    monkeypatch.setattr(policy, "AUTO_EXACT_LIMIT", 2_000)
    data, ids = clustered(20_000, 1), np.arange(1, 20_001) * 7
    index = VectorIndex.build("auto", DIM, ids, data)
    assert index.chosen == "IVF128,SQfp16" and index.inner_type == "IndexIVFScalarQuantizer"
    assert 1 <= index.nprobe < 128  # tuned, not a scan of every list
    assert index.note.startswith("auto: IVF128,SQfp16 trained at 20,000 vectors, nprobe ")
    assert "recall@10" in index.note and f"nprobe {index.nprobe}" in index.note
    # fresh queries from the same distribution (not the calibration set) reach the target too
    assert recall_at_10(index, data, ids, clustered(200, 2)) >= 0.95
    index.save(tmp_path / "ivf.faiss")
    again = VectorIndex.load(tmp_path / "ivf.faiss", "auto", DIM)
    assert (again.chosen, again.nprobe) == (index.chosen, index.nprobe)
    assert again.remove([int(ids[0])]) == 1  # an inverted file can remove in place


def test_rechoice_when_the_size_moves(monkeypatch):
    monkeypatch.setattr(policy, "AUTO_EXACT_LIMIT", 1_000)
    small = VectorIndex.build("auto", DIM, np.arange(900), clustered(900, 3))
    assert not needs_rechoice(small)
    small.add(np.arange(900, 1_100), clustered(200, 4))  # crossed the limit
    assert needs_rechoice(small)
    ivf = VectorIndex.build("auto", DIM, np.arange(4_000), clustered(4_000, 5))
    assert ivf.chosen == "IVF64,SQfp16" and not needs_rechoice(ivf)
    ivf.add(np.arange(4_000, 9_000), clustered(5_000, 6))  # sqrt(9,000) = 95 lists ideal: within 2x of 64
    assert not needs_rechoice(ivf)
    ivf.add(np.arange(9_000, 20_000), clustered(11_000, 7))  # sqrt(20,000) = 141: more than 2x
    assert needs_rechoice(ivf)
    fixed = VectorIndex.build("Flat", DIM, np.arange(2_000), clustered(2_000, 8))
    assert not needs_rechoice(fixed)  # only auto indexes are re-chosen


def test_collection_status_shows_the_choice(run, photos, monkeypatch):
    from searchengine import SearchEngine

    monkeypatch.setattr(policy, "AUTO_EXACT_LIMIT", 4)
    run(photos)
    with SearchEngine.open("test") as engine:
        st = engine.status()
    assert st.index_factory == "auto" and st.index_in_use.startswith("IVF") and st.index_nprobe >= 1
    assert st.index_type == "IndexIVFScalarQuantizer" and st.index_vectors == 6
    assert "auto: IVF" in st.index_note


@pytest.mark.parametrize("factory", ["auto", "IDMap2,auto"])
def test_auto_is_a_factory_name(factory):
    assert policy.normalize_factory(factory) == "auto"
    assert VectorIndex.create(factory, DIM).ntotal == 0


def test_an_inverted_file_goes_back_to_exact_search_only_well_below_the_limit(monkeypatch):
    monkeypatch.setattr(policy, "AUTO_EXACT_LIMIT", 4_000)
    ivf = VectorIndex.build("auto", DIM, np.arange(4_000), clustered(4_000, 9))
    assert ivf.chosen.startswith("IVF")
    ivf.remove(range(1_000))  # 3,000 left: below the limit, above half of it
    assert not needs_rechoice(ivf)
    ivf.remove(range(1_000, 2_500))  # 1,500 left
    assert needs_rechoice(ivf)


def test_an_auto_index_that_cannot_train_yet_searches_exactly_and_says_so(monkeypatch):
    monkeypatch.setattr(memory, "choose_factory", lambda n: "IVF4096,SQfp16")  # more lists than vectors
    index = VectorIndex.build("auto", DIM, np.arange(300), clustered(300, 10))
    assert index.untrained_fallback and index.note.startswith(FALLBACK_NOTE)
    assert index.chosen == "Flat" and index.ntotal == 300
    assert not needs_rechoice(index)  # the writer rebuilds it when vectors are added


def test_tiny_inverted_files_calibrate_on_what_there_is(monkeypatch):
    monkeypatch.setattr(policy, "AUTO_EXACT_LIMIT", 4)
    index = VectorIndex.build("auto", DIM, np.arange(6), clustered(6, 11))
    assert index.chosen.startswith("IVF") and "recall@10 1.000" in index.note


def test_adding_images_to_an_auto_collection_does_not_rebuild_it(run, photos, monkeypatch):
    from searchengine import SearchEngine
    from tests.support import imagegen

    run(photos)
    rebuilds = []
    monkeypatch.setattr(SearchEngine, "rebuild_index", lambda self, *a, **k: rebuilds.append(1))
    imagegen.photo(photos / "new.jpg", seed=42)
    report = run(photos)
    assert report.added == 1 and rebuilds == []
    with SearchEngine.open("test") as engine:
        assert engine.index.ntotal == 7 and engine.status().index_in_use == "Flat"


@pytest.mark.parametrize("factory", ["auto", "IVF64,Flat"])
def test_inverted_files_remove_many_times_and_keep_their_ids(monkeypatch, tmp_path, factory):
    monkeypatch.setattr(policy, "AUTO_EXACT_LIMIT", 1_000)
    data, ids = clustered(4_000, 12), np.arange(4_000) * 3 + 5
    index = VectorIndex.build(factory, DIM, ids, data)
    assert index.inner_type.startswith("IndexIVF")
    for batch in (ids[:10], ids[10:1_000], ids[1_000:1_001]):  # faiss's id map over an IVF aborted here
        assert index.remove(batch.tolist()) == len(batch)
    np.testing.assert_array_equal(index.ids(), ids[1_001:])
    _, found = index.search(data[2_000:2_010], 1)
    np.testing.assert_array_equal(found[:, 0], ids[2_000:2_010])  # each vector still finds its own id
    index.save(tmp_path / "ivf.faiss")
    again = VectorIndex.load(tmp_path / "ivf.faiss", factory, DIM)
    np.testing.assert_array_equal(again.ids(), ids[1_001:])


def test_an_old_id_mapped_inverted_file_is_refused_so_the_engine_rebuilds_it(tmp_path):
    import faiss

    from searchengine.errors import VectorIndexError

    old = faiss.IndexIDMap2(faiss.index_factory(DIM, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT))
    data = clustered(500, 13)
    old.train(data)
    old.add_with_ids(data, np.arange(500).astype(np.int64))
    faiss.write_index(old, str(tmp_path / "old.faiss"))
    with pytest.raises(VectorIndexError, match="cannot remove"):
        VectorIndex.load(tmp_path / "old.faiss", "IVF8,Flat", DIM)
