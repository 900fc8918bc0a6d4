"""The stages package on its own: explicit arguments in, no engine (fakes for the store and models)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import searchengine.stages as stages
from searchengine.config import StageModels
from searchengine.errors import ModelLoadError, QueryError
from searchengine.stages import (
    DEFAULT_CAPTION_MODEL,
    caption_images,
    caption_spec,
    load_reranker,
    rerank_hits,
    rerank_spec,
    tag_images,
    vqa_spec,
)
from tests.support.fakemodel import ColorEncoder


@dataclass(frozen=True)
class FakeHit:
    id: int
    path: str
    score: float
    first_score: float | None = None


class Flip:
    spec = "flip"

    def rank(self, query, candidates, top_k=None):
        return [(i, 1.0 - n / len(candidates)) for n, (i, _) in enumerate(reversed(candidates))][:top_k]


def test_exports_every_name_the_engine_and_cli_import():
    for name in ("Reranker", "TagReport", "rerank_hits", "load_reranker", "rerank_spec", "caption_spec", "vqa_spec",
                 "generate_cached", "caption_images", "classify_vectors", "tag_images", "read_labels", "StageRunner"):
        assert name in stages.__all__ and hasattr(stages, name), name


def test_rerank_hits_reorders_and_keeps_the_first_score():
    hits = [FakeHit(1, "a", 0.9), FakeHit(2, "b", 0.5), FakeHit(3, "c", 0.1)]
    out = rerank_hits(Flip(), "words", hits)
    assert [h.id for h in out] == [3, 2, 1]
    assert out[0].score == 1.0 and out[0].first_score == 0.1
    assert rerank_hits(Flip(), "words", []) == []
    with pytest.raises(QueryError, match="text query"):
        rerank_hits(Flip(), "  ", hits)


def test_specs_are_explicit_with_stage_models():
    models = StageModels(caption="/c", vqa="/v", rerank="/r")
    assert (caption_spec(None, models), vqa_spec(None, models), rerank_spec(None, models)) == ("/c", "/v", "/r")
    assert caption_spec("/x", models) == "/x"
    with pytest.raises(ModelLoadError, match="--rerank-model"):
        load_reranker(None, "cpu", StageModels())


def test_stages_never_read_the_environment_settings_carry_it(monkeypatch, tmp_path):
    """The environment is read once at the edge (Settings.from_env); stage functions take what they are given."""
    from searchengine.config import Settings

    monkeypatch.setenv("SEARCHENGINE_CAPTION_MODEL", "/env-caption")
    assert caption_spec() == DEFAULT_CAPTION_MODEL
    assert caption_spec(None, Settings.from_env(data_dir=tmp_path).stage_models) == "/env-caption"
    with pytest.raises(ModelLoadError, match="SEARCHENGINE_RERANK_MODEL"):
        rerank_spec()


class FakeStore:
    def __init__(self, vectors=None, todo=()):
        self.vectors = vectors
        self.todo = list(todo)
        self.tags: list = []
        self.generated: dict = {}
        self.written: list = []
        self.caption_model = None

    def all_vectors(self, cid):
        return np.arange(len(self.vectors)), self.vectors

    def replace_tags(self, cid, rows):
        self.tags = rows

    def set_caption_model(self, cid, spec):
        self.caption_model = spec

    def images_without_generated(self, cid):
        return self.todo

    def generated_texts(self, task, model, question, keys):
        return {k: v for k, v in self.generated.items() if k in keys}

    def put_generated(self, task, model, question, made):
        self.generated.update(made)

    def write_generated(self, cid, captions, vectors):
        self.written.append((captions, vectors))


def test_tag_images_from_stored_vectors():
    enc = ColorEncoder()
    vectors = enc.encode_texts(["red", "blue", "green"])
    store = FakeStore(vectors)
    report = tag_images(store, 1, enc, ["red", "blue"], threshold=0.6)
    assert report.per_label == {"red": 1, "blue": 1} and report.images == 3 and report.tags == 2
    assert sorted((i, label) for i, label, _ in store.tags) == [(0, "red"), (1, "blue")]


def test_caption_images_writes_captions_with_their_vectors():
    @dataclass
    class Row:
        id: int
        path: str
        content_hash: str

    class Captioner:
        spec = "fake-captioner"

        def generate(self, images):
            return [f"a red thing {p}" for p in images]

    store = FakeStore(todo=[Row(1, "x.png", "h1"), Row(2, "y.png", "h2")])
    seen = []
    assert caption_images(store, 1, Captioner(), ColorEncoder(), progress=seen.append) == 2
    assert store.caption_model == "fake-captioner" and seen == [2]
    captions, vectors = store.written[0]
    assert captions == {1: "a red thing x.png", 2: "a red thing y.png"} and len(vectors) == 2
