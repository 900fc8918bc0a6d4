"""Which model each stage runs: the spec given, else the configured :class:`StageModels`, else the
stage's preset (:data:`searchengine.models.registry.STAGE_DEFAULTS`)."""

from __future__ import annotations

from ..config import StageModels
from ..models.registry import STAGE_DEFAULTS, stage_spec

__all__ = ["rerank_spec", "caption_spec", "vqa_spec", "DEFAULT_CAPTION_MODEL", "DEFAULT_VQA_MODEL"]

DEFAULT_CAPTION_MODEL = STAGE_DEFAULTS["caption"]
DEFAULT_VQA_MODEL = STAGE_DEFAULTS["vqa"]


def _configured(models: StageModels | None) -> StageModels:
    # the environment is read once, at the edge (Settings.from_env, the CLI), never here
    return models if models is not None else StageModels()


def rerank_spec(spec: str | None = None, models: StageModels | None = None) -> str:
    """The reranker's spec; none ships, so with nothing named this raises ModelLoadError saying what to pass."""
    return stage_spec("rerank", spec, _configured(models))


def caption_spec(spec: str | None = None, models: StageModels | None = None) -> str:
    return stage_spec("caption", spec, _configured(models))


def vqa_spec(spec: str | None = None, models: StageModels | None = None) -> str:
    return stage_spec("vqa", spec, _configured(models))
