"""The public surface: exports, import cost, settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import searchengine
from searchengine.config import Settings
from searchengine.errors import ConfigError, SearchEngineError


def test_exported_members():
    assert set(searchengine.__all__) == {
        "__version__", "SearchEngine", "Hit", "CollectionStatus", "Settings", "SearchEngineError", "ConfigError",
        "ModelError", "ModelLoadError", "ModelMismatchError", "StoreError", "CollectionNotFoundError",
        "VectorIndexError", "ImageDecodeError", "QueryError"}
    for name in searchengine.__all__:
        assert getattr(searchengine, name) is not None
    for name in searchengine.__all__:
        obj = getattr(searchengine, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, SearchEngineError)


def test_import_is_light():
    code = "import sys, searchengine, indexer; print(sorted(m for m in ('torch','open_clip','faiss') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "[]"


def test_settings_from_env_and_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("SEARCHENGINE_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("SEARCHENGINE_COLLECTION", "shop")
    monkeypatch.setenv("SEARCHENGINE_BATCH_SIZE", "8")
    s = Settings.from_env(collection=None, device="cpu")
    assert (s.data_dir, s.collection, s.batch_size, s.device) == (tmp_path / "h", "shop", 8, "cpu")
    assert s.database_url.endswith("/h/searchengine.db") and s.collection_dir == tmp_path / "h" / "collections" / "shop"
    assert Settings.from_env(collection="other", db_url="postgresql://u@h/db").database_url == "postgresql://u@h/db"
    monkeypatch.setenv("SEARCHENGINE_BATCH_SIZE", "many")
    with pytest.raises(ConfigError):
        Settings.from_env()
    monkeypatch.delenv("SEARCHENGINE_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SEARCHENGINE_BATCH_SIZE", "4")
    assert Settings.from_env().data_dir == tmp_path / "xdg" / "searchengine"


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "x" * 65])
def test_bad_collection_names(name):
    with pytest.raises(ConfigError):
        Settings(collection=name)
