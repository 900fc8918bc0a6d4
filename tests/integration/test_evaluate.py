"""Evaluation where the right answers are known (the colour fake model), and CLI output."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from searchengine.cli import app
from searchengine.errors import ConfigError
from searchengine.training.datasets import load_labelled, load_pairs, split_pairs
from searchengine.training.evaluate import evaluate_retrieval, evaluate_zeroshot, recall_at
from tests.support.fakemodel import NAMES, color_image, use_color_model


@pytest.fixture
def colors(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    lines = []
    for name in NAMES[:5]:
        color_image(tmp_path / "imgs" / f"{name}.png", name)
        lines.append({"image": f"imgs/{name}.png", "captions": [f"a {name} square", f"something {name}"]})
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    return spec, manifest


def test_recall_at():
    assert recall_at([[1, 2, 3], [4, 5, 6]], [{3}, {9}], [1, 3]) == {1: 0.0, 3: 0.5}
    assert recall_at([], [], [1]) == {1: 0.0}


def test_retrieval_is_perfect_when_captions_name_the_colour(colors):
    spec, manifest = colors
    report = evaluate_retrieval(load_pairs(manifest), model=spec, ks=(1, 5))
    assert (report.images, report.text_queries) == (5, 5)
    assert report.text_to_image == {1: 1.0, 5: 1.0} and report.image_to_text == {1: 1.0, 5: 1.0}
    assert evaluate_retrieval(load_pairs(manifest), model=spec, ks=(1,), all_captions=True).text_queries == 10


def test_retrieval_with_wrong_captions_scores_zero_at_one(colors, tmp_path):
    spec, manifest = colors
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    for a, b in zip(lines, lines[1:] + lines[:1]):  # every image gets the next one's captions
        a["wrong"] = b["captions"]
    for line in lines:
        line["captions"] = line.pop("wrong")
    shuffled = tmp_path / "wrong.jsonl"
    shuffled.write_text("\n".join(json.dumps(line) for line in lines))
    report = evaluate_retrieval(load_pairs(shuffled), model=spec, ks=(1,))
    assert report.text_to_image == {1: 0.0} and report.image_to_text == {1: 0.0}


def test_zeroshot_accuracy_on_known_classes(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    for name in ("red", "green", "blue"):
        for i in range(3):
            color_image(tmp_path / "classes" / f"{name}_things" / f"{i}.png", name)
    (tmp_path / "classes" / "labels.json").write_text(json.dumps({"red_things": "red"}))
    items, labels = load_labelled(tmp_path / "classes")
    assert labels == {"blue_things": "blue things", "green_things": "green things", "red_things": "red"}
    report = evaluate_zeroshot(items, labels, model=spec)
    assert (report.images, report.classes, report.top1, report.top5) == (9, 3, 1.0, 1.0)
    out = CliRunner().invoke(app, ["eval", "zeroshot", str(tmp_path / "classes"), "--model", spec, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["top1"] == 1.0


def test_eval_retrieval_cli(colors):
    spec, manifest = colors
    out = CliRunner().invoke(app, ["eval", "retrieval", str(manifest), "--model", spec, "-k", "1", "-k", "5"])
    assert out.exit_code == 0, out.output
    assert "text->image    1.000  1.000" in out.stdout


def test_manifests_and_splits(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "a.txt").write_text("first caption\nsecond\n")
    (tmp_path / "b.jpg").write_bytes(b"x")  # no caption: not a pair
    assert [p.captions for p in load_pairs(tmp_path)] == [("first caption", "second")]
    csv = tmp_path / "m.csv"
    csv.write_text("image,captions,group\na.jpg,one|two,g1\nb.jpg,three,g1\n")
    pairs = load_pairs(csv)
    assert [p.captions for p in pairs] == [("one", "two"), ("three",)] and pairs[0].image == tmp_path / "a.jpg"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.jpg", "caption": "x"}\nnot json\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        load_pairs(bad)
    many = [p for i in range(50) for p in load_pairs(csv)]
    many = [type(p)(p.image, p.captions, group=f"g{i % 10}") for i, p in enumerate(many)]
    train, val = split_pairs(many, 0.2, seed=1)
    assert {p.group for p in train}.isdisjoint({p.group for p in val}) and len({p.group for p in val}) == 2
    assert split_pairs(many, 0.2, seed=1) == (train, val)


def test_a_copy_of_the_image_or_a_shared_caption_is_a_right_answer(colors, tmp_path):
    spec, manifest = colors
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    lines.append({"image": "imgs/red.png", "captions": ["a red square"]})  # the same image listed twice
    twice = tmp_path / "twice.jsonl"
    twice.write_text("\n".join(json.dumps(line) for line in lines))
    report = evaluate_retrieval(load_pairs(twice), model=spec, ks=(1,))
    assert report.text_to_image == {1: 1.0} and report.image_to_text == {1: 1.0}
