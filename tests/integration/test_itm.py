"""The in-house cross-attention ITM reranker: a few training steps on a tiny set over the real lite
towers (loss falls; the saved model reloads to the same scores), the reranker interface and its
feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from searchengine.models.itm import CrossAttentionITM, ItmConfig, is_itm_dir, load_itm
from searchengine.training.datasets import Pair
from searchengine.training.itm import ItmOptions, _hard_negatives, _pick, train_itm
from tests.support.fakemodel import COLORS, color_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("itm")
    pairs = []
    for name in COLORS:
        for shade in range(2):
            path = color_image(root / "pics" / f"{name}-{shade}.png", name, size=(40 + 8 * shade, 32))
            pairs.append(Pair(path, (f"a {name} square",), group=f"{name}-{shade}"))
    opts = ItmOptions(epochs=6, lr=3e-3, batch_size=8, dim=32, layers=1, heads=2, negatives_from=4, rerank_top=4,
                      val_fraction=0.25, dropout=0.0)
    report = train_itm(pairs, out=root / "model", options=opts, device="cpu", cache_dir=root / "cache")
    return root, report, pairs


def test_training_lowers_the_loss_and_saves_a_loadable_model(trained):
    root, report, _ = trained
    losses = [e.loss for e in report.epochs]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert report.train_pairs + report.val_pairs == 16
    assert is_itm_dir(root / "model") and (root / "model" / "training.json").is_file()
    assert any((root / "cache").rglob("*.npy"))  # features cached on disk


def test_reload_gives_the_same_scores(trained):
    root, _, pairs = trained
    images = [p.image for p in pairs[:6]]
    a = load_itm(str(root / "model"), "cpu").score("a red square", images)
    b = load_itm(f"local-dir:{root / 'model'}", "cpu").score("a red square", images)
    assert a.shape == (6,) and np.all((a >= 0) & (a <= 1))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_rank_orders_by_score_and_caches_features(trained, monkeypatch):
    root, _, pairs = trained
    model = load_itm(str(root / "model"), "cpu")
    candidates = [(i, p.image) for i, p in enumerate(pairs[:5])]
    probs = model.score("a blue square", [p for _, p in candidates])
    calls = []
    original = model.image_features
    monkeypatch.setattr(model, "image_features", lambda ims: calls.append(len(ims)) or original(ims))
    ranked = model.rank("a blue square", candidates, top_k=3)
    assert [i for i, _ in ranked] == list(np.argsort(-probs, kind="stable")[:3])
    assert calls == []  # every candidate's features came from the recent-files cache
    assert model.rank("a blue square", []) == []


def test_head_shapes_and_padding_mask():
    torch.manual_seed(0)
    head = CrossAttentionITM(ItmConfig(dim=16, layers=1, heads=2, patches=4, dropout=0.0)).eval()
    patches, states = torch.randn(3, 4, 1280), torch.randn(3, 5, 384)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 3)
    out = head(patches, states, mask, torch.zeros(3))
    assert out.shape == (3,)
    states2 = states.clone()
    states2[:, 3:] = 99.0  # what sits under the padding does not matter
    torch.testing.assert_close(head(patches, states2, mask, torch.zeros(3)), out)


def test_hard_negatives_skip_positives():
    sims = np.array([[0.9, 0.8, 0.1, 0.5], [0.2, 0.9, 0.8, 0.7]])
    negs = _hard_negatives(sims, [{0, 1}, {1}], 2)
    assert negs.tolist() == [[3, 2], [2, 3]]
    picked = _pick(np.array([[5, -1], [-1, -1]]), np.random.default_rng(0))
    assert picked.tolist() == [5, -1]


def test_not_an_itm_folder(tmp_path):
    from searchengine.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="train --itm"):
        load_itm(str(tmp_path))
