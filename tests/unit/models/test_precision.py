"""Model precision on CPU: bf16 where it pays and stays close to fp32, fp32 otherwise; lite's traced trunk."""

from __future__ import annotations

import numpy as np
import pytest

from searchengine.config import Settings
from searchengine.errors import ConfigError
from searchengine.models import clip, device
from searchengine.models.clip import load_encoder
from searchengine.models.device import cpu_has_amx
from tests.support import imagegen

TEXTS = ["a cat on a sofa", "red sports car", "a bowl of fruit"]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


def test_auto_precision_uses_bf16_on_amx_cpus_and_stays_close_to_fp32(tiny_model):
    auto = load_encoder(tiny_model, "cpu")
    fp32 = load_encoder(tiny_model, "cpu", "fp32")
    assert fp32.precision == "fp32"
    if cpu_has_amx():
        assert auto.precision == "bf16" and "probe cosine" in auto.precision_note
    else:
        assert auto.precision == "fp32"
    images = [imagegen.photo_image(i) for i in range(6)]
    a, b = auto.encode_images(images), fp32.encode_images(images)
    assert a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert _cosines(a, b).min() >= 0.99
    assert _cosines(auto.encode_texts(TEXTS), fp32.encode_texts(TEXTS)).min() >= 0.99


def test_auto_keeps_fp32_when_reduced_precision_drifts(tiny_model, monkeypatch):
    monkeypatch.setattr(device, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(device, "MIN_PRECISION_COSINE", 1.5)  # no bf16 probe can reach this
    enc = load_encoder(tiny_model, "cpu")
    assert enc.precision == "fp32"
    assert "probe cosine" in enc.precision_note and "< 1.5" in enc.precision_note
    assert enc.encode_images([imagegen.photo_image(0)]).shape == (1, enc.dim)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_explicit_reduced_precision_on_cpu(tiny_model, precision):
    enc = load_encoder(tiny_model, "cpu", precision)
    ref = load_encoder(tiny_model, "cpu", "fp32")
    assert enc.precision == precision
    images = [imagegen.photo_image(i) for i in range(3)]
    assert _cosines(enc.encode_images(images), ref.encode_images(images)).min() >= 0.99


def test_unknown_precision_is_refused(tiny_model):
    with pytest.raises(ConfigError, match="precision"):
        load_encoder(tiny_model, "cpu", "int4")
    with pytest.raises(ConfigError, match="precision"):
        Settings(precision="fp8")


def test_lite_runs_fp32_with_a_traced_trunk_equal_to_eager():
    from searchengine.models.lite import LITE_CPU_MICRO_BATCH

    enc = load_encoder("lite", "cpu")
    assert enc.precision == "fp32" and enc.micro_batch == LITE_CPU_MICRO_BATCH
    pixels = [enc.pixels_from_pil(imagegen.photo_image(i)) for i in range(6)]  # 6: two micro-batches
    fast = enc.encode_pixels(pixels)
    enc.model.__dict__.pop("_fast_trunk")
    enc.micro_batch = None
    eager = enc.encode_pixels(pixels)
    np.testing.assert_allclose(fast, eager, atol=1e-4)


def test_text_tower_skips_the_padding_exactly(tiny_model):
    enc = load_encoder(tiny_model, "cpu", "fp32")
    assert enc._trim_text  # open_clip's causal CLIP text tower, pooled at the end token
    texts = ["a", "a photo of a red sports car parked on a rainy street at night, seen from above", *TEXTS]
    trimmed = enc.encode_texts(texts)
    enc._trim_text = False
    np.testing.assert_allclose(trimmed, enc.encode_texts(texts), atol=1e-5)


def test_text_trimming_is_off_for_towers_that_see_the_padding(tiny_model, monkeypatch):
    from searchengine.models.clip import _trimmable

    enc = load_encoder(tiny_model, "cpu", "fp32")
    monkeypatch.setattr(enc.model, "text_pool_type", "last")  # pooled at the last position: padding matters
    assert not _trimmable(enc.model)
    assert not enc._check_trimmed_text()


def test_a_model_that_fails_in_bf16_stays_fp32(tiny_model, monkeypatch):
    import torch

    real_probe = clip.ClipEncoder.probe

    def probe(self):
        if self.dtype == torch.bfloat16:
            raise RuntimeError("no bf16 kernel for this op")
        return real_probe(self)

    monkeypatch.setattr(device, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(clip.ClipEncoder, "probe", probe)
    enc = load_encoder(tiny_model, "cpu")
    assert enc.precision == "fp32" and "bf16 failed" in enc.precision_note
    assert enc.encode_texts(["a dog"]).shape == (1, enc.dim)
