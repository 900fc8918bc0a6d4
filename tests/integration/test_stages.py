"""Stages on the hits, end to end: rerank (tiny random BLIP ITM through the engine), captions and
answers (tiny random BLIP; cached per content and model), zero-shot classify and tag (the colour
fake model, where the right answers are known), and their CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from indexer import index_folder
from searchengine import SearchEngine
from searchengine.cli import app
from searchengine.errors import QueryError
from tests.support.fakemodel import COLORS, color_folder, use_color_model
from tests.support.tinyblip import make_tiny_blip

runner = CliRunner()


@pytest.fixture(scope="module")
def blip(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("blip")
    return {task: str(make_tiny_blip(root / task, task)) for task in ("itm", "caption", "vqa")}


@pytest.fixture
def colours(tmp_path, monkeypatch):
    """A colour collection: one image per colour in ``pics/``; returns (engine factory, folder, spec)."""
    spec = use_color_model(monkeypatch)
    pics = color_folder(tmp_path / "pics")
    index_folder([pics], collection="c", model=spec)
    return pics, spec


def open_engine(spec):
    return SearchEngine.open("c", model=spec, writable=True)


class Counter:
    """Wraps a model method and counts the images it is run on."""

    def __init__(self, obj, name: str, monkeypatch) -> None:
        self.images = 0
        original = getattr(obj, name)

        def counted(images, *args, **kwargs):
            self.images += len(images)
            return original(images, *args, **kwargs)

        monkeypatch.setattr(obj, name, counted)


# -- reranking --------------------------------------------------------------------------------------
def test_rerank_rescores_the_first_stage_with_itm_probabilities(colours, blip):
    _, spec = colours
    with open_engine(spec) as engine:
        first = engine.search("a red square", k=8)
        hits = engine.search("a red square", k=3, rerank=blip["itm"], rerank_top=8)
        matcher = engine.reranker(blip["itm"])
        expected = matcher.score("a red square", [h.path for h in first])
    assert len(hits) == 3
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    by_path = dict(zip((h.path for h in first), expected))
    for h in hits:  # the probability the matcher gives that image, and the first stage's score kept
        assert h.score == pytest.approx(float(by_path[h.path]), abs=1e-5)
        assert h.first_score == pytest.approx(next(f.score for f in first if f.path == h.path))
    assert [h.path for h in hits] == [p for p, _ in sorted(by_path.items(), key=lambda x: -x[1])][:3]


def test_rerank_min_score_applies_to_the_probability(colours, blip):
    _, spec = colours
    with open_engine(spec) as engine:
        all_hits = engine.search("blue", k=8, rerank=blip["itm"], rerank_top=8)
        cut = sorted(h.score for h in all_hits)[4]
        kept = engine.search("blue", k=8, rerank=blip["itm"], rerank_top=8, min_score=cut)
    assert len(kept) == sum(h.score >= cut for h in all_hits) and all(h.score >= cut for h in kept)


def test_rerank_needs_words_and_a_loadable_model(colours, blip, monkeypatch):
    pics, spec = colours
    with open_engine(spec) as engine:
        with pytest.raises(QueryError, match="text query"):
            engine.search(image=str(pics / "red.png"), rerank=blip["itm"])
        from searchengine.errors import ModelLoadError

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(ModelLoadError, match="save_pretrained"):
            engine.search("red", rerank="Salesforce/no-such-blip-itm")
        with pytest.raises(ModelLoadError, match="not a BLIP"):  # a captioning folder is no ITM model
            engine.search("red", rerank=blip["caption"])
        with pytest.raises(ModelLoadError, match="--rerank-model"):  # no reranker ships: it must be named
            engine.search("red", rerank=True)


class FlipReranker:
    """A reranker of our own: the interface is ``rank(query, candidates, top_k)``."""

    spec = "flip"

    def rank(self, query, candidates, top_k=None):
        return [(i, 1.0 - n / len(candidates)) for n, (i, _) in enumerate(reversed(candidates))][:top_k]


def test_any_object_with_rank_plugs_in(colours):
    _, spec = colours
    with open_engine(spec) as engine:
        first = engine.search("red", k=4)
        hits = engine.search("red", k=4, rerank=FlipReranker(), rerank_top=4)
    assert [h.id for h in hits] == [h.id for h in reversed(first)]
    assert hits[0].score == 1.0 and hits[0].first_score == first[-1].score


# -- captions and answers ----------------------------------------------------------------------------
def test_captions_are_cached_per_content_and_model(colours, blip, monkeypatch, tmp_path):
    pics, spec = colours
    with open_engine(spec) as engine:
        captioner = engine.captioner(blip["caption"])
        count = Counter(captioner, "generate", monkeypatch)
        first = engine.caption([pics / "red.png", pics / "blue.png"], model=blip["caption"])
        assert count.images == 2 and all(isinstance(t, str) and t for t in first)
        again = engine.caption([pics / "blue.png", pics / "red.png"], model=blip["caption"])
        assert count.images == 2 and again == first[::-1]  # no second run
        copy = tmp_path / "copy-of-red.png"
        copy.write_bytes((pics / "red.png").read_bytes())
        assert engine.caption([copy], model=blip["caption"]) == first[:1] and count.images == 2  # same content
        hits = engine.search("red", k=2, caption=blip["caption"])
        assert count.images == 3  # only the second hit was new
        assert hits[0].generated_caption == first[0]


def test_answers_are_cached_per_question(colours, blip, monkeypatch):
    pics, spec = colours
    monkeypatch.setenv("SEARCHENGINE_VQA_MODEL", blip["vqa"])
    with open_engine(spec) as engine:
        answerer = engine.answerer()
        count = Counter(answerer, "predict_answers", monkeypatch)
        a1 = engine.ask([pics / "red.png"], "what colour is it?")
        engine.ask([pics / "red.png"], "what colour is it?")
        assert count.images == 1 and isinstance(a1[0], str)
        engine.ask([pics / "red.png"], "is it big?")
        assert count.images == 2
        hits = engine.search("red", k=1, ask="what colour is it?")
        assert hits[0].answer == a1[0] and count.images == 2
        with pytest.raises(QueryError):
            engine.ask([pics / "red.png"], "  ")


def test_index_caption_makes_generated_captions_searchable(colours, blip, monkeypatch):
    pics, spec = colours
    with open_engine(spec) as engine:
        done = engine.caption_collection(blip["caption"])
        assert done == len(COLORS)
        assert engine.caption_collection(blip["caption"]) == 0  # nothing left to caption
        caption = engine.caption([pics / "green.png"], model=blip["caption"])[0]
        word = max(caption.split(), key=len)
        hits = engine.search(word, k=10, mode="keyword")
        assert any(h.path == str(pics / "green.png") for h in hits)
        texts = engine.search_texts(text=caption, k=20)
        assert any(t.field == "generated" and t.path == str(pics / "green.png") and t.text == caption for t in texts)
    # a changed image loses its old caption and is captioned again; the others are not
    Image.new("RGB", (24, 16), COLORS["blue"]).save(pics / "green.png")
    index_folder([pics], collection="c", model=spec)
    with open_engine(spec) as engine:
        count = Counter(engine.captioner(blip["caption"]), "generate", monkeypatch)
        assert engine.caption_collection(blip["caption"]) == 1
        assert count.images == 0  # its new content (blue) was captioned before: cached


# -- zero-shot ---------------------------------------------------------------------------------------
def test_classify_known_answers(colours):
    pics, spec = colours
    labels = ["red", "green", "blue", "yellow"]
    with open_engine(spec) as engine:
        results = engine.classify([pics / "red.png", pics / "blue.png", Image.open(pics / "yellow.png")], labels)
    for (best, p), want in zip((r[0] for r in results), ["red", "blue", "yellow"]):
        assert best == want and p > 0.9
    for r in results:
        assert sum(p for _, p in r) == pytest.approx(1.0, abs=1e-5)


def test_tag_stores_tags_as_a_filter_and_keyword_text(colours):
    pics, spec = colours
    with open_engine(spec) as engine:
        report = engine.tag(["red", "blue", "green"], threshold=0.5)
        assert report.images == len(COLORS) and report.per_label == {"red": 1, "blue": 1, "green": 1}
        hits = engine.search("anything", k=10, filters="tag = 'blue'")
        assert [Path(h.path).name for h in hits] == ["blue.png"]
        assert hits[0].attributes["tag"] == ["blue"]
        assert [Path(h.path).name for h in engine.search("green", k=10, mode="keyword")] == ["green.png"]
        engine.tag(["red", "yellow"], threshold=0.6)  # replaces the earlier tags (0.5 each for other colours)
        assert engine.search("x", k=10, filters={"tag": "blue"}) == []
        assert [Path(h.path).name for h in engine.search("x", k=10, filters={"tag": "yellow"})] == ["yellow.png"]


def test_tag_and_classify_validate_labels(colours):
    from searchengine.stages import read_labels

    _, spec = colours
    assert read_labels("cat, dog,cat") == ["cat", "dog"]
    with pytest.raises(QueryError, match="two labels"):
        read_labels("cat")


# -- CLI ---------------------------------------------------------------------------------------------
def test_cli_stage_commands(colours, blip, tmp_path):
    pics, spec = colours
    out = runner.invoke(app, ["classify", str(pics / "red.png"), "--labels", "red,blue,green", "-c", "c", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result[0]["labels"][0]["label"] == "red"
    labels = tmp_path / "labels.txt"
    labels.write_text("# colours\nred\nblue\n", encoding="utf-8")
    out = runner.invoke(app, ["tag", "--labels", str(labels), "-c", "c", "--threshold", "0.6"])
    assert out.exit_code == 0 and "2 tags on 8 images" in out.output, out.output
    out = runner.invoke(app, ["search", "x", "-c", "c", "--filter", "tag=red", "--json"])
    assert [Path(h["path"]).name for h in json.loads(out.output)] == ["red.png"]
    out = runner.invoke(app, ["caption", str(pics / "red.png"), "--caption-model", blip["caption"], "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)[0]["caption"]
    out = runner.invoke(app, ["ask", str(pics / "red.png"), "what is it?", "--vqa-model", blip["vqa"]])
    assert out.exit_code == 0 and out.output.strip(), out.output
    out = runner.invoke(app, ["search", "red", "-c", "c", "--rerank", "--rerank-model", blip["itm"],
                              "--rerank-top", "4", "-k", "2", "--json"])
    assert out.exit_code == 0, out.output
    hits = json.loads(out.output)
    assert len(hits) == 2 and all(h["first_score"] is not None and 0 <= h["score"] <= 1 for h in hits)
    out = runner.invoke(app, ["ask", str(pics / "nope.png"), "what?", "--vqa-model", blip["vqa"]])
    assert out.exit_code == 6 and "no such image" in out.output


def test_cli_offline_missing_blip_is_one_line(colours, monkeypatch):
    pics, _ = colours
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = runner.invoke(app, ["caption", str(pics / "red.png"), "--caption-model", "Salesforce/not-cached"])
    assert out.exit_code == 4
    assert out.output.count("\n") == 1 and "save_pretrained" in out.output


def test_vectors_unchanged_by_tagging(colours):
    _, spec = colours
    with open_engine(spec) as engine:
        before = engine.store.all_vectors(engine.collection.id)[1].copy()
        engine.tag(["red", "blue"])
        assert np.array_equal(before, engine.store.all_vectors(engine.collection.id)[1])
