"""Which faiss index each factory string builds (in the spirit of faiss tests/test_factory.py): the
concrete classes, who keeps the ids, the metric, and the ``auto`` and ``ondisk:`` policies."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from searchengine.errors import ConfigError
from searchengine.index import factory as policy
from searchengine.index.base import inner_index, is_lossy

DIM = 16


@pytest.mark.parametrize("factory, outer, inner", [
    ("Flat", "IndexIDMap2", "IndexFlat"),
    ("IDMap2,Flat", "IndexIDMap2", "IndexFlat"),
    ("IDMap,Flat", "IndexIDMap2", "IndexFlat"),
    ("IDMap2, HNSW8", "IndexIDMap2", "IndexHNSWFlat"),
    ("SQ8", "IndexIDMap2", "IndexScalarQuantizer"),
    ("PQ4x4", "IndexIDMap2", "IndexPQ"),
    ("IVF16,Flat", "IndexIVFFlat", "IndexIVFFlat"),  # an inverted file keeps the ids itself
    ("IDMap2,IVF16,Flat", "IndexIVFFlat", "IndexIVFFlat"),
    ("IVF16,PQ4", "IndexIVFPQ", "IndexIVFPQ"),
    ("IVF16,SQfp16", "IndexIVFScalarQuantizer", "IndexIVFScalarQuantizer"),
    ("auto", "IndexIDMap2", "IndexFlat"),  # empty: the build chooses by size
    ("ondisk:IVF16,PQ4", "IndexIDMap2", "IndexFlat"),  # exact until it is built on disk from the store
])
def test_factory_string_builds_that_faiss_index(factory, outer, inner):
    import faiss

    index = policy.make_index(factory, DIM)
    assert type(index).__name__ == outer and type(inner_index(index)).__name__ == inner
    assert index.d == DIM and index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert inner_index(index).metric_type == faiss.METRIC_INNER_PRODUCT


@pytest.mark.parametrize("factory, lossy", [
    ("Flat", False), ("SQ8", False), ("IVF16,SQfp16", False), ("HNSW8", False),
    ("PQ4x4", True), ("IVF16,PQ4", True), ("OPQ4,PQ4x4", True), ("HNSW8_PQ4", True),
])
def test_product_quantised_codes_are_lossy(factory, lossy):
    assert is_lossy(policy.make_index(factory, DIM)) is lossy


@pytest.mark.parametrize("factory", ["NoSuchIndex99", "IVF16,PQ", "", "IDMap2,"])
def test_invalid_strings_are_config_errors(factory):
    with pytest.raises(ConfigError):
        policy.make_index(factory, DIM)


def test_auto_chooses_exact_search_below_the_threshold_and_an_inverted_file_above():
    import faiss

    limit = policy.AUTO_EXACT_LIMIT
    assert policy.choose_factory(0) == policy.choose_factory(limit - 1) == "Flat"
    assert policy.choose_factory(limit) == "IVF256,SQfp16"  # sqrt(100,000) = 316 -> 256 lists
    assert policy.choose_factory(1_000_000) == "IVF1024,SQfp16"
    for n in (limit, 4 * limit, 1_000_000, 10_000_000):
        nlist = policy.ivf_lists(policy.choose_factory(n))
        assert nlist == policy.nlist_for(n) and 0.5 <= n ** 0.5 / nlist <= 2  # about sqrt(n), a power of two
        assert nlist & (nlist - 1) == 0
    built = policy.make_index(policy.choose_factory(limit), DIM)
    assert isinstance(built, faiss.IndexIVFScalarQuantizer) and built.nlist == 256
    assert isinstance(inner_index(policy.make_index(policy.choose_factory(limit - 1), DIM)), faiss.IndexFlat)


@pytest.mark.parametrize("factory, base", [
    ("ondisk:IVF64,PQ8", "IVF64,PQ8"), ("ondisk: IVF64, Flat", "IVF64,Flat"), ("IVF64,SQ8", "IVF64,SQ8"),
])
def test_ondisk_strings_name_an_inverted_file(factory, base):
    assert policy.base_factory(factory) == base
    assert policy.is_ondisk(factory) is factory.startswith("ondisk:")


@pytest.mark.parametrize("factory", ["ondisk:HNSW32", "ondisk:Flat", "ondisk:IVF64,PQ", "ondisk:IVF8,PQ4+8"])
def test_ondisk_strings_that_are_not_inverted_files_are_refused(factory):
    with pytest.raises(ConfigError):
        policy.base_factory(factory)


def test_normalize_factory_strips_id_maps_and_spaces():
    assert policy.normalize_factory(" IDMap2, IVF64, PQ8 ") == "IVF64,PQ8"
    assert policy.normalize_factory("IDMap,auto") == "auto"


@pytest.mark.parametrize("module", ["searchengine.index", "searchengine.index.base", "searchengine.index.factory",
                                    "searchengine.index.calibrate", "searchengine.index.memory",
                                    "searchengine.index.ondisk", "searchengine.index.ondisk_build",
                                    "searchengine._fs", "searchengine.vectors"])
def test_exported_names_exist(module):
    mod = importlib.import_module(module)
    assert mod.__all__ and all(hasattr(mod, name) for name in mod.__all__)


def test_an_ivf_keeps_its_ids_so_it_removes_in_place():
    from searchengine.index import VectorIndex

    data = np.random.default_rng(0).standard_normal((400, DIM)).astype(np.float32)
    index = VectorIndex.build("IVF4,Flat", DIM, np.arange(400) * 5, data / np.linalg.norm(data, axis=1, keepdims=True))
    assert type(index.faiss_index).__name__ == "IndexIVFFlat"
    assert index.remove([0, 5, 7]) == 2 and index.ntotal == 398
