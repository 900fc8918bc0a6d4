from __future__ import annotations

import numpy as np
import pytest

from searchengine.errors import ConfigError, VectorIndexError
from searchengine.index import VectorIndex, normalize_factory

DIM = 16


def unit(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("factory, inner", [
    ("Flat", "IndexFlatIP"), ("IDMap2,Flat", "IndexFlatIP"), ("HNSW8", "IndexHNSWFlat"),
    ("IVF4,Flat", "IndexIVFFlat"), ("SQ8", "IndexScalarQuantizer"), ("PQ4x4", "IndexPQ"),
])
def test_factory_string_builds_that_index(factory, inner):
    vi = VectorIndex.build(factory, DIM, np.arange(200, dtype=np.int64), unit(200))
    assert vi.inner_type == inner and vi.note == "" and vi.ntotal == 200
    assert vi.factory == normalize_factory(factory)


def test_bad_factory_is_a_config_error():
    with pytest.raises(ConfigError, match="factory"):
        VectorIndex.create("NoSuchIndex99", DIM)


def test_too_few_vectors_to_train_falls_back_to_exact_search():
    vi = VectorIndex.build("IVF64,Flat", DIM, np.arange(10, dtype=np.int64), unit(10))
    assert vi.inner_type == "IndexFlatIP" and "Flat" in vi.note and vi.ntotal == 10


def test_ids_are_the_given_keys_and_search_is_exact_inner_product():
    vecs = unit(50)
    ids = np.arange(1000, 1050, dtype=np.int64)
    vi = VectorIndex.build("Flat", DIM, ids, vecs)
    scores, found = vi.search(vecs[7], k=3)
    assert found[0][0] == 1007 and scores[0][0] == pytest.approx(1.0, abs=1e-5)
    brute = vecs @ vecs[7]
    np.testing.assert_allclose(scores[0], np.sort(brute)[::-1][:3], atol=1e-5)
    assert vi.remove([1007, 1008, 99999]) == 2
    assert 1007 not in vi.search(vecs[7], k=50)[1][0]
    assert sorted(vi.ids().tolist()) == [i for i in range(1000, 1050) if i not in (1007, 1008)]


def test_empty_index_search_and_shape_errors():
    vi = VectorIndex.create("Flat", DIM)
    scores, ids = vi.search(unit(2), k=5)
    assert scores.shape == ids.shape == (2, 0)
    with pytest.raises(VectorIndexError):
        vi.add(np.arange(3, dtype=np.int64), np.zeros((3, DIM + 1), np.float32))
    with pytest.raises(VectorIndexError):
        vi.add(np.arange(2, dtype=np.int64), unit(3))


def test_hnsw_cannot_remove_and_says_so():
    vi = VectorIndex.build("HNSW8", DIM, np.arange(20, dtype=np.int64), unit(20))
    with pytest.raises(VectorIndexError, match="rebuilt"):
        vi.remove([3])


def test_save_is_atomic_and_load_round_trips(tmp_path, monkeypatch):
    import faiss

    path = tmp_path / "idx" / "index.faiss"
    vi = VectorIndex.build("Flat", DIM, np.arange(30, dtype=np.int64), unit(30))
    vi.save(path)
    loaded = VectorIndex.load(path, "Flat", DIM)
    assert loaded.ntotal == 30 and sorted(loaded.ids().tolist()) == list(range(30))

    real_write = faiss.write_index

    def boom(index, writer):  # writes the whole new index into the temp file, then fails
        real_write(index, writer)
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(VectorIndexError, match="disk full"):
        VectorIndex.build("Flat", DIM, np.arange(5, dtype=np.int64), unit(5)).save(path)
    monkeypatch.undo()
    assert VectorIndex.load(path, "Flat", DIM).ntotal == 30  # the previous file is intact
    assert [p.name for p in path.parent.iterdir()] == ["index.faiss"]  # no temp file left
    path.write_bytes(b"garbage")
    with pytest.raises(VectorIndexError):
        VectorIndex.load(path, "Flat", DIM)
