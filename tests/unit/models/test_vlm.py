"""BLIP plumbing end to end on tiny random models (searchengine.models.vlm): no weights downloaded."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from searchengine.errors import ConfigError, ModelLoadError, QueryError
from searchengine.models import vlm
from searchengine.models.vlm import BlipAnswerer, BlipCaptioner, BlipMatcher, load_vlm
from tests.support import imagegen
from tests.support.tinyblip import make_tiny_blip


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """One tiny model folder per task, built once for the module."""
    return {task: str(make_tiny_blip(tmp_path_factory.mktemp(f"blip-{task}"), task))
            for task in ("itm", "caption", "vqa")}


@pytest.fixture(scope="module")
def matcher(folders) -> BlipMatcher:
    return load_vlm(folders["itm"], "itm", device="cpu", batch_size=16)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [imagegen.photo_image(seed, size=(40 + 4 * seed, 32)) for seed in range(5)]


def test_exports():
    assert set(vlm.__all__) == {"BlipAnswerer", "BlipCaptioner", "BlipMatcher", "ImageInput", "VlmTask", "load_vlm"}


def test_itm_scores_are_probabilities(matcher, folders, images):
    assert (matcher.spec, matcher.name, matcher.device) == (folders["itm"], "blip-itm", "cpu")
    scores = matcher.score("a red car on the street", images)
    assert scores.dtype == np.float32 and scores.shape == (5,)
    assert np.all((scores >= 0) & (scores <= 1))
    assert len(set(scores.round(7).tolist())) > 1  # the images matter


def test_itm_batching_gives_the_same_scores(matcher, folders, images):
    small = load_vlm(folders["itm"], "itm", device="cpu", batch_size=2)
    np.testing.assert_allclose(small.score("two dogs", images), matcher.score("two dogs", images), atol=1e-5)


def test_rank_orders_by_score_and_cuts_to_top_k(matcher, images, tmp_path):
    path = imagegen.photo(tmp_path / "p.png", seed=3, size=(44, 32))
    candidates = [(10 + i, im) for i, im in enumerate(images[:3])] + [(13, path), (14, images[4])]
    scores = matcher.score("a cat", images)
    ranked = matcher.rank("a cat", candidates)
    expected = sorted(zip([10, 11, 12, 13, 14], scores.tolist()), key=lambda pair: -pair[1])
    assert [i for i, _ in ranked] == [i for i, _ in expected]
    np.testing.assert_allclose([s for _, s in ranked], [s for _, s in expected], atol=1e-5)
    assert all(isinstance(i, int) and isinstance(s, float) for i, s in ranked)
    assert matcher.rank("a cat", candidates, top_k=2) == ranked[:2]
    assert matcher.rank("a cat", candidates, top_k=0) == []


def test_rank_ties_keep_input_order(matcher, images):
    same = [(7, images[0]), (3, images[0]), (5, images[0])]
    assert [i for i, _ in matcher.rank("a dog", same)] == [7, 3, 5]


def test_empty_inputs(matcher):
    assert matcher.rank("a dog", []) == []
    empty = matcher.score("a dog", [])
    assert empty.shape == (0,) and empty.dtype == np.float32
    with pytest.raises(QueryError):
        matcher.score("  ", [])
    with pytest.raises(ConfigError):
        matcher.rank("a dog", [], top_k=-1)


def test_alpha_goes_over_white(matcher):
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    np.testing.assert_allclose(matcher.score("snow", [clear]), matcher.score("snow", [white]), atol=1e-6)


def test_captions_one_per_image_and_deterministic(folders, images):
    captioner = load_vlm(folders["caption"], "caption", device="cpu", batch_size=2)
    assert isinstance(captioner, BlipCaptioner) and captioner.spec == folders["caption"]
    first = captioner.generate(images[:3], max_new_tokens=5, num_beams=2)
    assert len(first) == 3 and all(isinstance(c, str) and c == c.strip() for c in first)
    assert captioner.generate(images[:3], max_new_tokens=5, num_beams=2) == first
    assert len(captioner.generate(images[:1], prompt="a photo of", max_new_tokens=3)) == 1
    assert captioner.generate([]) == []


def test_vqa_answers_one_per_image(folders, images, tmp_path):
    answerer = load_vlm(folders["vqa"], "vqa", device="cpu", batch_size=2)
    assert isinstance(answerer, BlipAnswerer) and answerer.spec == folders["vqa"]
    path = imagegen.photo(tmp_path / "q.jpg", seed=1)
    answers = answerer.predict_answers([*images[:2], path], "how many dogs are there?", max_new_tokens=4)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert answerer.predict_answers([], "what color?") == []
    with pytest.raises(QueryError):
        answerer.predict_answers(images[:1], " ")


@pytest.mark.parametrize("folder_task, task", [("caption", "itm"), ("itm", "vqa"), ("vqa", "caption")])
def test_wrong_task_folder_is_refused(folders, folder_task, task):
    with pytest.raises(ModelLoadError, match=f"not a BLIP {task} model"):
        load_vlm(folders[folder_task], task, device="cpu")


def test_folder_without_architectures_is_checked_by_its_weights(folders, tmp_path):
    folder = shutil.copytree(folders["caption"], tmp_path / "no-arch")
    config = json.loads((folder / "config.json").read_text())
    del config["architectures"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="lacks .* weights of a BLIP itm model"):
        load_vlm(str(folder), "itm", device="cpu")


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_vlm(str(tmp_path), "vqa", device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ModelLoadError, match="not a BLIP model"):
        load_vlm(str(tmp_path), "vqa", device="cpu")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_vlm(str(tmp_path / "missing"), "vqa", device="cpu")


def test_missing_model_offline_says_what_to_pass(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_vlm("Salesforce/no-such-blip-vqa", "vqa", device="cpu")
    message = str(info.value)
    assert "\n" not in message and "'Salesforce/no-such-blip-vqa'" in message
    assert "not in the Hugging Face cache (offline)" in message and "--vqa-model" in message


def test_bad_arguments(folders):
    with pytest.raises(ConfigError):
        load_vlm(folders["itm"], "retrieval", device="cpu")  # type: ignore[call-overload]
    with pytest.raises(ConfigError):
        load_vlm(folders["itm"], "itm", device="cpu", batch_size=0)
    with pytest.raises(ConfigError):
        load_vlm("  ", "itm", device="cpu")
