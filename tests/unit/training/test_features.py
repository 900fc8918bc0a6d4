"""The one feature cache both trainers use: its two on-disk layouts, and computing only what it lacks."""

from __future__ import annotations

import numpy as np
import pytest

from searchengine.training.features import FeatureCache, file_key, image_features, text_features, text_key
from tests.support import imagegen


def test_archive_round_trip_and_memory_only(tmp_path):
    path = tmp_path / "sub" / "lite-x-images.npz"
    cache = FeatureCache.archive(path)
    assert cache.get("a") is None
    cache.put("a", np.arange(3, dtype=np.float32))
    cache.put("b", np.ones(3, np.float32))
    assert not path.exists()  # written by save(), not by put()
    cache.save()
    assert sorted(p.name for p in path.parent.iterdir()) == ["lite-x-images.npz"]  # no temp file left
    again = FeatureCache.archive(path)
    np.testing.assert_array_equal(again.get("a"), np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(again.get("b"), np.ones(3, np.float32))
    memory = FeatureCache.archive(None)
    memory.put("a", np.zeros(2))
    memory.save()  # nothing to write to
    assert memory.get("a") is not None
    FeatureCache.archive(tmp_path / "empty.npz").save()
    assert not (tmp_path / "empty.npz").exists()  # an empty cache writes no file


def test_files_layout_writes_each_entry_at_once_and_recomputes_a_damaged_one(tmp_path):
    folder = tmp_path / "itm"
    cache = FeatureCache.files(folder)
    cache.put("k1", np.ones((2, 3), np.float16))
    cache.put("k2", np.zeros((4, 3), np.float16))  # ragged shapes are fine
    assert sorted(p.name for p in folder.iterdir()) == ["k1.npy", "k2.npy"]
    fresh = FeatureCache.files(folder)
    assert fresh.get("k1").shape == (2, 3) and fresh.get("k2").shape == (4, 3)
    (folder / "k1.npy").write_bytes(b"not an array")
    assert fresh.get("k1") is None
    assert FeatureCache.files(None).get("k1") is None


def test_keys():
    assert text_key("a dog") == text_key("a dog") != text_key("a cat")
    assert text_key("a dog").startswith("t")


def test_image_features_compute_only_what_the_cache_lacks(tmp_path):
    good = [imagegen.photo(tmp_path / f"{i}.png", seed=i, size=(20, 16)) for i in range(3)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    paths = [good[0], tmp_path / "missing.png", broken, good[1], good[2]]
    calls: list[int] = []
    done: list[int] = []

    def encode(images):
        calls.append(len(images))
        return [np.full(2, im.size[0], np.float32) for im in images]

    cache = FeatureCache.archive(None)
    feats, keys = image_features(paths, encode, 16, cache, batch=2, progress=done.append)
    assert [f is None for f in feats] == [False, True, True, False, False]
    assert keys[1] is None and keys[2] is None and keys[0] == file_key(good[0])
    assert sum(calls) == 3 and sum(done) == len(paths)
    calls.clear()
    done.clear()
    again, _ = image_features(paths[3:], encode, 16, cache, progress=done.append)
    assert calls == [] and done == [2]  # all cached
    np.testing.assert_array_equal(again[0], feats[3])


def test_text_features_in_batches_from_the_cache(tmp_path):
    seen: list[list[str]] = []

    def encode(texts):
        seen.append(list(texts))
        return [np.full(2, len(t), np.float32) for t in texts]

    cache = FeatureCache.files(tmp_path / "c")
    out = text_features(["a", "bb", "ccc"], encode, cache, batch=2)
    assert seen == [["a", "bb"], ["ccc"]] and [int(v[0]) for v in out] == [1, 2, 3]
    seen.clear()
    out = text_features(["bb", "dddd"], encode, FeatureCache.files(tmp_path / "c"), batch=2)
    assert seen == [["dddd"]] and [int(v[0]) for v in out] == [2, 4]
    assert text_features([], encode, cache) == []


@pytest.mark.parametrize("layout", ["archive", "files"])
def test_put_then_get_in_one_instance(tmp_path, layout):
    cache = FeatureCache(tmp_path / ("x.npz" if layout == "archive" else "x"), layout)
    cache.put("k", np.arange(4))
    np.testing.assert_array_equal(cache.get("k"), np.arange(4))
