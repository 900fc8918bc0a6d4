"""Torch-free text queries (issue 17): `export-model` writes the collection model's text tower (ONNX)
and tokenizer; a later text search loads neither torch nor open_clip and ranks as torch does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer import index_folder
from searchengine import SearchEngine
from searchengine.cli import app

COLL = "qexport"
ROOT = Path(__file__).resolve().parents[2]
QUERIES = ["a photo of a dog", "red sports car", "un café à Paris"]

_SEARCH = """
import json, sys
from searchengine import SearchEngine
with SearchEngine.open(sys.argv[1]) as engine:
    out = [[(h.id, round(h.score, 4)) for h in engine.search_text(q, k=4)] for q in json.loads(sys.argv[2])]
print(json.dumps({"hits": out, "heavy": sorted(m for m in ("torch", "open_clip", "transformers", "timm")
                                                 if m in sys.modules)}))
"""


@pytest.fixture
def indexed(tiny_model, photos):
    index_folder([photos], collection=COLL, model=tiny_model)
    with SearchEngine.open(COLL) as engine:
        torch_hits = [[[h.id, round(h.score, 4)] for h in engine.search_text(q, k=4)] for q in QUERIES]
    return torch_hits


def _search_in_fresh_process() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", _SEARCH, COLL, json.dumps(QUERIES)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_text_search_after_export_model_runs_without_torch(indexed):
    before = _search_in_fresh_process()
    assert "torch" in before["heavy"]  # no export yet: the query loads the torch model
    result = CliRunner().invoke(app, ["export-model", "-c", COLL, "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output)
    assert meta["min_cosine"] >= 0.9999
    after = _search_in_fresh_process()
    assert after["heavy"] == []
    for ours, theirs in zip(after["hits"], indexed):
        assert [i for i, _ in ours] == [i for i, _ in theirs]
        assert all(abs(a - b) < 1e-3 for (_, a), (_, b) in zip(ours, theirs))


def test_an_export_of_other_weights_is_not_used(indexed, other_tiny_model, tmp_path):
    """An export whose fingerprint is not the collection's falls back to torch (one log line)."""
    from searchengine.models.clip import load_encoder
    from searchengine.models.query_text import QUERY_MODEL_DIR, export_query_text

    with SearchEngine.open(COLL) as engine:
        folder = engine.settings.collection_dir / QUERY_MODEL_DIR
    export_query_text(load_encoder(other_tiny_model, "cpu", "fp32"), folder)
    after = _search_in_fresh_process()
    assert "torch" in after["heavy"]
    assert after["hits"] == indexed
