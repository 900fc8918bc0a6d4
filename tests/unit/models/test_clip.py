from __future__ import annotations

import numpy as np
import pytest

from searchengine.errors import ConfigError, ModelLoadError
from searchengine.models.clip import fingerprint_id, load_encoder, parse_spec, probes_match, select_device
from tests.support import imagegen


@pytest.mark.parametrize("spec, name, pretrained", [
    ("ViT-B-32:laion2b_s34b_b79k", "ViT-B-32", "laion2b_s34b_b79k"),
    ("ViT-B-32:/w/model.safetensors", "ViT-B-32", "/w/model.safetensors"),
    ("hf-hub:org/repo", "hf-hub:org/repo", None),
    ("local-dir:/models/mine", "local-dir:/models/mine", None),
])
def test_parse_spec_forms(spec, name, pretrained):
    parsed = parse_spec(spec)
    assert (parsed.model_name, parsed.pretrained) == (name, pretrained)


@pytest.mark.parametrize("spec", ["", "ViT-B-32", "ViT-B-32:", "hf-hub:", "local-dir:"])
def test_parse_spec_refuses_specs_without_weights(spec):
    with pytest.raises(ConfigError):
        parse_spec(spec)


def test_select_device():
    assert select_device("cpu") == "cpu"
    assert select_device("auto") in ("cpu", "cuda", "mps")
    with pytest.raises(ConfigError):
        select_device("tpu")


def test_encoders_give_normalised_float32_and_handle_empty_input(tiny_model):
    enc = load_encoder(tiny_model, "cpu", "fp32")  # compared with open_clip's fp32 model below
    imgs = [imagegen.photo_image(i) for i in range(3)]
    iv = enc.encode_images(imgs)
    tv = enc.encode_texts(["a cat", "a dog"])
    assert iv.dtype == tv.dtype == np.float32
    assert iv.shape == (3, enc.dim) and tv.shape == (2, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(iv, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(tv, axis=1), 1.0, atol=1e-5)
    assert enc.encode_images([]).shape == (0, enc.dim)
    assert enc.encode_texts([]).shape == (0, enc.dim)
    # the split preprocessing (PIL stage in workers, tensor stage batched) equals open_clip's own
    import open_clip
    import torch

    _, _, preprocess = open_clip.create_model_and_transforms(tiny_model)
    with torch.inference_mode():
        ref = enc.model.encode_image(torch.stack([preprocess(im) for im in imgs]))
    ref = ref.numpy() / np.linalg.norm(ref.numpy(), axis=1, keepdims=True)
    np.testing.assert_allclose(iv, ref, atol=1e-5)


def test_probe_identifies_the_weights(tiny_model, other_tiny_model):
    a1, a2 = load_encoder(tiny_model, "cpu").probe(), load_encoder(tiny_model, "cpu").probe()
    b = load_encoder(other_tiny_model, "cpu").probe()
    assert probes_match(a1, a2) and fingerprint_id(a1) == fingerprint_id(a2)
    assert not probes_match(a1, b)


def test_load_errors_say_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="local-dir:") as info:
        load_encoder("ViT-B-32:laion2b_s34b_b79k", "cpu")
    assert "not in the local cache" in str(info.value)
    with pytest.raises(ModelLoadError, match="not found"):
        load_encoder(f"local-dir:{tmp_path / 'missing'}", "cpu")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "open_clip_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no weights"):
        load_encoder(f"local-dir:{tmp_path / 'noweights'}", "cpu")
    with pytest.raises(ModelLoadError, match="unknown model architecture"):
        load_encoder("NoSuchNet:/x.pt", "cpu")
    with pytest.raises(ModelLoadError, match="neither a known pretrained tag"):
        load_encoder("ViT-B-32:no_such_tag", "cpu")


def test_broken_local_weights_say_so(tiny_model, tmp_path):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(tiny_model.split(":", 1)[1], folder)
    weights = folder / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="cannot load the model .* from its files"):
        load_encoder(f"local-dir:{folder}", "cpu")
