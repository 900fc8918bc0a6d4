"""The training package's public names, its import cost, and the flat modules it replaced."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import searchengine.training

MODULES = ["clip_towers", "contrastive", "datasets", "evaluate", "features", "itm", "lite_heads", "loop", "metrics"]


@pytest.mark.parametrize("name", MODULES)
def test_every_module_exports_what_it_lists(name):
    module = importlib.import_module(f"searchengine.training.{name}")
    assert module.__all__ and all(hasattr(module, n) for n in module.__all__)


def test_package_exports():
    assert all(getattr(searchengine.training, n) is not None for n in searchengine.training.__all__)


def test_import_loads_no_model_library():
    code = ("import sys, searchengine.training; "
            "print(sorted(m for m in ('torch','open_clip','faiss','transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[3])
    assert out.stdout.strip() == "[]"


def test_the_itm_cache_is_the_files_layout(tmp_path):
    from searchengine.training.features import FeatureCache

    cache = FeatureCache.files(tmp_path / "c")
    assert cache.layout == "files" and cache.path == tmp_path / "c"


@pytest.mark.parametrize("old", ["train", "train_itm", "evaluate", "datasets", "zeroshot", "keyword", "ondisk"])
def test_the_old_flat_modules_are_gone(old):
    """Offline tooling lives in searchengine.training, zero-shot in stages, keyword documents in
    store, the on-disk index in index: the flat modules were removed, not kept as shims."""
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"searchengine.{old}")
