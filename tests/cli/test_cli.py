"""The CLI through typer's CliRunner: output formats, exit codes, help."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from searchengine.cli import app
from tests.support import imagegen

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def indexed(tiny_model, photos):
    imagegen.truncated_jpeg(photos / "broken.jpg")
    result = cli("index", photos, "--model", tiny_model)
    assert result.exit_code == 0, result.output
    return photos


def test_index_prints_a_summary_and_reindex_is_a_no_op(indexed, tiny_model):
    first = cli("index", indexed, "--json")
    report = json.loads(first.stdout)
    assert (report["added"], report["unchanged"], report["encoded"], report["failed"]) == (0, 6, 0, 0)
    assert report["known_failures"] == 1


def test_summary_line(tiny_model, photos):
    result = cli("index", photos, "--model", tiny_model, "-c", "other")
    assert result.exit_code == 0
    assert "6 added, 0 updated, 0 moved, 0 removed, 0 unchanged, 0 failed" in result.stdout
    assert "images/s" in result.stdout


def test_search_text_table_and_json(indexed):
    table = cli("search", "a dog on a beach", "-k", "3")
    assert table.exit_code == 0, table.output
    lines = table.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "1" and lines[0].split()[2].startswith(str(indexed))
    hits = json.loads(cli("search", "a dog on a beach", "-k", "4", "--json").stdout)
    assert len(hits) == 4 and {"id", "path", "score"} <= set(hits[0])
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_search_by_image_path(indexed):
    hits = json.loads(cli("search", indexed / "img2.jpg", "--json", "-k", "2").stdout)
    assert hits[0]["path"] == str(indexed / "img2.jpg") and hits[0]["score"] == pytest.approx(1.0, abs=2e-3)


def test_search_text_that_names_a_file_with_text_flag(indexed, monkeypatch):
    monkeypatch.chdir(indexed)
    as_image = json.loads(cli("search", "img2.jpg", "--json", "-k", "1").stdout)
    assert as_image[0]["path"].endswith("img2.jpg")
    assert cli("search", "img2.jpg", "--text", "--json").exit_code == 0


def test_status_and_errors(indexed):
    st = json.loads(cli("status", "--json").stdout)
    assert (st["images"], st["errors"], st["index_type"], st["dim"]) == (6, 1, "IndexFlatIP", 32)
    assert st["model"].startswith("local-dir:")
    text = cli("status", "--errors")
    assert "broken.jpg" in text.stdout and "truncated" in text.stdout
    listed = json.loads(cli("status", "--errors", "--json").stdout)["error_files"]
    assert [os.path.basename(e["path"]) for e in listed] == ["broken.jpg"]


def test_rebuild_index_command(indexed):
    result = cli("rebuild-index", "--index-factory", "HNSW16")
    assert result.exit_code == 0 and "6 vectors" in result.stdout
    assert json.loads(cli("status", "--json").stdout)["index_type"] == "IndexHNSWFlat"
    assert json.loads(cli("search", "x", "--json", "-k", "6").stdout).__len__() == 6


def test_errors_become_messages_and_exit_codes(indexed, tiny_model, other_tiny_model, tmp_path):
    missing = cli("search", "x", "-c", "nope")
    assert missing.exit_code == 3 and "does not exist" in missing.stderr and "Traceback" not in missing.output
    mismatch = cli("index", indexed, "--model", other_tiny_model)
    assert mismatch.exit_code == 5 and "was built with model" in mismatch.stderr
    bad_model = cli("index", indexed, "-c", "fresh", "--model", f"local-dir:{tmp_path / 'none'}")
    assert bad_model.exit_code == 4 and "not found" in bad_model.stderr
    no_folder = cli("index", tmp_path / "nowhere")
    assert no_folder.exit_code == 2 and "no such file or folder" in no_folder.stderr
    bad_factory = cli("index", indexed, "-c", "f2", "--model", tiny_model, "--index-factory", "Bogus12")
    assert bad_factory.exit_code == 2 and "factory" in bad_factory.stderr
    assert cli("search", "   ").exit_code == 6


@pytest.mark.parametrize("command", ["index", "search", "status", "rebuild-index"])
def test_help(command):
    result = cli(command, "--help")
    assert result.exit_code == 0 and "--collection" in result.stdout


def test_version():
    assert cli("--version").stdout.startswith("searchengine ")
