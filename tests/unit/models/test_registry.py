"""The one model-spec grammar (models/registry.py): every form, the presets as plain data, the loaders."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from searchengine.config import StageModels
from searchengine.errors import ConfigError, ModelLoadError
from searchengine.models import registry
from searchengine.models.registry import (
    ENCODER_PRESETS,
    ITM_MARKER,
    LITE_MARKER,
    LOADERS,
    STAGE_DEFAULTS,
    canonical_spec,
    local_path,
    resolve_encoder,
    resolve_stage,
    stage_spec,
)


def _folder(path: Path, marker: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / marker).write_text("{}", encoding="utf-8")
    return path


@pytest.mark.parametrize("spec, name, pretrained", [
    ("ViT-B-32:laion2b_s34b_b79k", "ViT-B-32", "laion2b_s34b_b79k"),
    ("ViT-B-32:/w/model.safetensors", "ViT-B-32", "/w/model.safetensors"),
    ("hf-hub:org/repo", "hf-hub:org/repo", None),
    ("local-dir:/models/mine", "local-dir:/models/mine", None),
])
def test_open_clip_forms_resolve_to_open_clip(spec, name, pretrained):
    resolved = resolve_encoder(spec)
    assert resolved.family == "open_clip" and resolved.spec == spec
    assert (resolved.parsed.model_name, resolved.parsed.pretrained) == (name, pretrained)


def test_lite_preset_and_lite_folders(tmp_path):
    assert resolve_encoder("lite").family == "lite"
    assert resolve_encoder("lite").folder == ENCODER_PRESETS["lite"]
    mine = _folder(tmp_path / "mine", LITE_MARKER)
    resolved = resolve_encoder(f"local-dir:{mine}")
    assert (resolved.family, resolved.folder) == ("lite", mine)
    other = tmp_path / "openclip"
    other.mkdir()
    assert resolve_encoder(f"local-dir:{other}").family == "open_clip"  # no lite marker: an open_clip folder


@pytest.mark.parametrize("spec", ["", "ViT-B-32", "ViT-B-32:", "hf-hub:", "local-dir:"])
def test_specs_without_weights_are_refused(spec):
    with pytest.raises(ConfigError):
        resolve_encoder(spec)


def test_presets_are_plain_data_that_point_at_shipped_files():
    for name, folder in ENCODER_PRESETS.items():
        assert registry.is_lite_dir(folder), name
    assert set(STAGE_DEFAULTS) == {"rerank", "caption", "vqa"}
    assert STAGE_DEFAULTS["rerank"] is None  # no reranker ships: none is pretended
    for family, target in LOADERS.items():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), family


def test_registry_and_stages_import_nothing_heavy_and_never_the_engine():
    code = ("import sys, searchengine.models.registry, searchengine.models, searchengine.stages; "
            "print(sorted({'torch', 'open_clip', 'transformers', 'timm', 'searchengine.engine'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[3])
    assert out.stdout.strip() == "[]"


def test_canonical_spec_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "w.pt").write_bytes(b"")
    assert canonical_spec(" local-dir:m ") == f"local-dir:{tmp_path / 'm'}"
    assert canonical_spec("ViT-B-32:./w.pt") == f"ViT-B-32:{tmp_path / 'w.pt'}"
    for spec in ("lite", "hf-hub:org/repo", "ViT-B-32:laion2b_s34b_b79k", "ViT-B-32:./missing.pt"):
        assert canonical_spec(spec) == spec


def test_local_path_tells_folders_from_hub_ids(tmp_path):
    assert local_path("Salesforce/blip-vqa-base") is None
    assert local_path(str(tmp_path)) == tmp_path
    assert local_path("./blip") == Path("./blip")
    assert local_path("a/b/c") == Path("a/b/c")
    assert local_path(f"local-dir:{tmp_path}") == tmp_path


# -- stage models -------------------------------------------------------------------------------------
def test_stage_spec_precedence():
    models = StageModels(rerank="/r", caption="/c", vqa=None)
    assert stage_spec("caption", "/given", models) == "/given"
    assert stage_spec("caption", None, models) == "/c"
    assert stage_spec("vqa", None, models) == STAGE_DEFAULTS["vqa"]
    assert stage_spec("caption", None, StageModels()) == STAGE_DEFAULTS["caption"]
    assert stage_spec("rerank", None, models) == "/r"
    with pytest.raises(ConfigError):
        stage_spec("summarise", None, models)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", [None, "", "itm"])
def test_no_reranker_ships_and_the_error_says_what_to_pass(spec):
    with pytest.raises(ModelLoadError) as info:
        stage_spec("rerank", spec, StageModels())
    message = str(info.value)
    assert "--rerank-model" in message and "SEARCHENGINE_RERANK_MODEL" in message and "train --itm" in message


def test_a_folder_named_like_the_old_preset_is_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _folder(tmp_path / "itm", ITM_MARKER)
    assert stage_spec("rerank", "itm", StageModels()) == "itm"


def test_resolve_stage_tells_itm_folders_from_blip(tmp_path):
    itm = _folder(tmp_path / "itm-model", ITM_MARKER)
    for spec in (str(itm), f"local-dir:{itm}"):
        resolved = resolve_stage("rerank", spec)
        assert (resolved.family, resolved.folder, resolved.spec) == ("itm", itm, spec)
    assert resolve_stage("rerank", "Salesforce/blip-itm-base-coco").family == "blip"
    assert resolve_stage("caption", str(itm)).family == "blip"  # only reranking takes ITM folders
    with pytest.raises(ConfigError):
        resolve_stage("vqa", "  ")


def test_stage_models_from_env_once(monkeypatch):
    from searchengine.config import Settings

    monkeypatch.setenv("SEARCHENGINE_RERANK_MODEL", "/r")
    monkeypatch.setenv("SEARCHENGINE_VQA_MODEL", "/v")
    models = StageModels.from_env(vqa="/given", caption=None)
    assert models == StageModels(rerank="/r", caption=None, vqa="/given")
    settings = Settings.from_env()
    assert settings.stage_models == StageModels(rerank="/r", vqa="/v")
    monkeypatch.setenv("SEARCHENGINE_RERANK_MODEL", "/changed")
    assert settings.stage_models.rerank == "/r"  # read once, at the edge
    assert Settings().stage_models == StageModels()
    with pytest.raises(AttributeError):
        models.rerank = "x"  # type: ignore[misc]
