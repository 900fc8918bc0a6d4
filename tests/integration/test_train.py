"""Training: the loss falls, the saved model reloads with the same embeddings; lite and open_clip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from searchengine.errors import ConfigError
from searchengine.models.clip import load_encoder
from searchengine.training.contrastive import TrainOptions, info_nce, one_cycle, retrieval_recall, train
from searchengine.training.datasets import Pair
from tests.support import imagegen

WORDS = ["apple", "boat", "car", "dog", "egg", "fish", "goat", "hat", "ink", "jar", "kite", "lamp"]


@pytest.fixture
def pairs(tmp_path):
    out = []
    for i, word in enumerate(WORDS):
        img = imagegen.photo(tmp_path / "imgs" / f"{word}.png", seed=300 + i, size=(40, 30))
        out.append(Pair(img, (f"a picture of a {word}", f"{word}"), group=word))
    return out


def test_info_nce_and_recall_helpers():
    import torch

    eye = torch.eye(4)
    assert float(info_nce(eye, eye, torch.tensor(np.log(100.0)))) < 0.01
    assert float(info_nce(eye, eye.flip(0), torch.tensor(np.log(100.0)))) > 10
    t2i, i2t = retrieval_recall(np.eye(3), np.eye(3), np.arange(3), np.arange(3), (1,))
    assert t2i == i2t == {1: 1.0}


def test_one_cycle_schedule_for_any_step_count():
    """OneCycleLR at 10% warm-up divides by zero for 10 steps (a refit of 5 epochs x 2 batches hit it)."""
    import torch

    for steps in range(0, 60):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        sched = one_cycle(opt, 1e-3, steps)
        lrs = [opt.param_groups[0]["lr"]]
        for _ in range(max(steps, 1) - 1):  # every step the schedule was built for
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        assert all(0 < lr <= 1e-3 + 1e-12 for lr in lrs), steps


def test_open_clip_training_lowers_the_loss_and_reloads(tiny_model, pairs, tmp_path):
    opts = TrainOptions(epochs=8, lr=5e-3, batch_size=12, val_fraction=0.25, seed=0, max_captions=2)
    out = tmp_path / "trained"
    report = train(pairs, base=tiny_model, out=out, options=opts, device="cpu", cache_dir=tmp_path / "cache")
    losses = [e.loss for e in report.epochs]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert (report.train_pairs, report.val_pairs) == (9, 3)
    assert json.loads((out / "training.json").read_text())["best_epoch"] == report.best_epoch
    trained = load_encoder(f"local-dir:{out}", "cpu")
    again = load_encoder(f"local-dir:{out}", "cpu")
    texts = ["a picture of a dog", "a boat"]
    np.testing.assert_allclose(trained.encode_texts(texts), again.encode_texts(texts), atol=1e-6)
    base = load_encoder(tiny_model, "cpu")
    imgs = [imagegen.photo_image(1)]
    np.testing.assert_allclose(trained.encode_images(imgs), base.encode_images(imgs), atol=1e-5)  # image tower locked
    assert not np.allclose(trained.encode_texts(texts), base.encode_texts(texts), atol=1e-3)  # text tower trained


def test_lite_training_from_scratch_and_reload(pairs, tmp_path):
    opts = TrainOptions(epochs=6, lr=1e-2, batch_size=12, val_fraction=0.25, variant="lite0", embed_dim=8, heads=2,
                        refit=True)
    out = tmp_path / "lite"
    cache = tmp_path / "cache"
    report = train(pairs, base="lite", out=out, options=opts, device="cpu", cache_dir=cache, from_scratch=True)
    assert report.epochs[-1].loss < report.epochs[0].loss
    assert report.alpha is not None and 0.0 <= report.alpha <= 1.0
    assert sorted(p.name for p in out.iterdir()) == ["heads.safetensors", "searchengine_model.json", "training.json"]
    assert (out / "heads.safetensors").stat().st_size < 1_000_000
    enc = load_encoder(f"local-dir:{out}", "cpu")
    assert enc.dim == 16 + 384
    imgs = [imagegen.photo_image(i) for i in range(2)]
    first = enc.encode_images(imgs)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(load_encoder(f"local-dir:{out}", "cpu").encode_images(imgs), first, atol=1e-5)
    assert sorted(p.name for p in cache.iterdir()) == ["lite-lite0-longest-10-64-images.npz", "lite-lite0-longest-10-64-texts.npz"]


def test_training_needs_data(tiny_model, tmp_path, pairs):
    with pytest.raises(ConfigError):
        train(pairs[:2], base=tiny_model, out=tmp_path / "x")
    with pytest.raises(ConfigError):
        TrainOptions(epochs=0)
    with pytest.raises(ConfigError, match="lite"):
        train(pairs, base=tiny_model, out=tmp_path / "x", from_scratch=True)


def test_new_collection_without_a_model_falls_back_to_lite_offline(photos, tmp_path, monkeypatch, caplog):
    from indexer import index_folder
    from searchengine import SearchEngine

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-cache"))
    with caplog.at_level("WARNING", logger="searchengine"):
        report = index_folder(photos, collection="offline")
    assert report.added == 6
    assert any("using the offline model 'lite'" in r.getMessage() for r in caplog.records)
    with SearchEngine.open("offline") as engine:
        assert engine.status().model == "lite"
        assert engine.search_image(photos / "img1.jpg", k=1)[0].path == str(photos / "img1.jpg")


def test_validation_drawn_from_one_source(tiny_model, pairs, tmp_path):
    opts = TrainOptions(epochs=1, batch_size=12, val_fraction=0.5)
    report = train(pairs, base=tiny_model, out=tmp_path / "v", options=opts, device="cpu", val_pool=pairs[:4])
    assert (report.train_pairs, report.val_pairs) == (10, 2)


def test_open_clip_training_with_the_image_tower_unlocked(tiny_model, pairs, tmp_path):
    opts = TrainOptions(epochs=8, lr=1e-3, batch_size=12, val_fraction=0.25, unlock_image=True, lock_text=True)
    out = tmp_path / "unlocked"
    report = train(pairs, base=tiny_model, out=out, options=opts, device="cpu", cache_dir=tmp_path / "cache")
    assert report.epochs[-1].loss < report.epochs[0].loss
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # pixels are not cached
    trained, base = load_encoder(f"local-dir:{out}", "cpu"), load_encoder(tiny_model, "cpu")
    imgs = [imagegen.photo_image(1)]
    assert not np.allclose(trained.encode_images(imgs), base.encode_images(imgs), atol=1e-4)  # image tower trained
