"""Near-duplicate groups and the --min-score cut-off, with the colour fake model (known answers)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from indexer import index_folder
from searchengine import SearchEngine
from searchengine.cli import app
from tests.support.fakemodel import color_image, use_color_model


def test_near_duplicates_and_min_score(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    folder = tmp_path / "pics"
    color_image(folder / "red-a.png", "red")
    color_image(folder / "red-b.png", "red", size=(40, 30))  # same colour, other size: a near duplicate
    color_image(folder / "sub" / "red-c.png", "red")
    color_image(folder / "blue-a.png", "blue")
    color_image(folder / "blue-b.png", "blue")
    color_image(folder / "green.png", "green")
    index_folder(folder, collection="dups", model=spec)
    with SearchEngine.open("dups") as engine:
        groups = engine.near_duplicates(0.95)
    assert [[h.path.rsplit("/", 1)[1] for h in g] for g in groups] == [
        ["red-a.png", "red-b.png", "red-c.png"], ["blue-a.png", "blue-b.png"]]
    assert all(h.score >= 0.99 for g in groups for h in g)
    out = CliRunner().invoke(app, ["duplicates", "-c", "dups", "--json"])
    assert out.exit_code == 0 and len(json.loads(out.stdout)) == 2
    hits = json.loads(CliRunner().invoke(app, ["search", "a red thing", "-c", "dups", "--json", "--min-score", "0.5"]).stdout)
    assert sorted(h["path"].rsplit("/", 1)[1] for h in hits) == ["red-a.png", "red-b.png", "red-c.png"]


def test_no_duplicates_in_an_empty_or_distinct_collection(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    color_image(tmp_path / "p" / "red.png", "red")
    color_image(tmp_path / "p" / "blue.png", "blue")
    index_folder(tmp_path / "p", collection="distinct", model=spec)
    with SearchEngine.open("distinct") as engine:
        assert engine.near_duplicates() == []
    out = CliRunner().invoke(app, ["duplicates", "-c", "distinct"])
    assert out.exit_code == 0 and "No near duplicates" in out.stdout
