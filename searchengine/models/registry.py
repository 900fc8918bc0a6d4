"""The one model-spec grammar: what a spec string names, the presets, and the loader of each family.

Dual encoders (a collection's model) are named in open_clip's forms: ``ARCH:TAG``
(``ViT-B-32:laion2b_s34b_b79k``), ``ARCH:/path/to/weights``, ``hf-hub:org/repo`` and
``local-dir:/path``, or by a preset (:data:`ENCODER_PRESETS`: ``lite``). A ``local-dir:`` folder is
an open_clip model, a lite model or an ITM reranker, told apart by its marker file. Stage models
(rerank, caption, VQA) are BLIP models (a Hugging Face id, or a ``save_pretrained`` folder, with or
without ``local-dir:``) or, for reranking, a folder from ``searchengine train --itm``.

Every table here is plain data: nothing registers itself on import. :data:`LOADERS` names each
family's loader as ``module:function``, imported on first load (those modules import torch).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from ..config import StageModels
from ..errors import ConfigError, ModelLoadError

__all__ = ["Family", "StageTask", "ParsedSpec", "EncoderSpec", "StageSpec", "LITE_MARKER", "ITM_MARKER",
           "ENCODER_PRESETS", "STAGE_DEFAULTS", "STAGE_DEFAULT_ALIASES", "STAGE_OPTIONS", "LOADERS",
           "parse_spec", "resolve_encoder", "resolve_stage", "stage_spec", "load_stage", "loader",
           "is_lite_dir", "is_itm_dir", "lite_folder", "itm_folder", "local_path", "canonical_spec"]

Family = Literal["open_clip", "lite", "itm", "blip"]
StageTask = Literal["rerank", "caption", "vqa"]

#: the file that marks a lite model folder, and an ITM reranker folder
LITE_MARKER = "searchengine_model.json"
ITM_MARKER = "searchengine_itm.json"

#: encoders that ship inside the package: name -> lite model folder
ENCODER_PRESETS: Mapping[str, Path] = {"lite": Path(__file__).parent / "lite"}

#: the model a stage uses when none is named; ``None``: no model ships for it, so one must be named
STAGE_DEFAULTS: Mapping[StageTask, str | None] = {
    "rerank": None,
    "caption": "Salesforce/blip-image-captioning-base",
    "vqa": "Salesforce/blip-vqa-base",
}
#: names that mean "the stage's default" (``itm`` named an in-house reranker that never shipped)
STAGE_DEFAULT_ALIASES: Mapping[StageTask, tuple[str, ...]] = {"rerank": ("itm",), "caption": (), "vqa": ()}
#: the CLI option, environment variable and kind of model that name each stage's model (for messages)
STAGE_OPTIONS: Mapping[StageTask, tuple[str, str, str]] = {
    "rerank": ("--rerank-model", "SEARCHENGINE_RERANK_MODEL",
               "a folder from `searchengine train --itm`, or a BLIP ITM model (a Hugging Face id such as "
               "Salesforce/blip-itm-base-coco, or a save_pretrained folder)"),
    "caption": ("--caption-model", "SEARCHENGINE_CAPTION_MODEL",
                "a BLIP captioning model (a Hugging Face id or a save_pretrained folder)"),
    "vqa": ("--vqa-model", "SEARCHENGINE_VQA_MODEL",
            "a BLIP VQA model (a Hugging Face id or a save_pretrained folder)"),
}
#: the BLIP task (:func:`searchengine.models.vlm.load_vlm`) behind each stage
_BLIP_TASKS: Mapping[StageTask, str] = {"rerank": "itm", "caption": "caption", "vqa": "vqa"}

#: family -> ``module:function`` that loads it; imported on first use, so nothing heavy loads at import
LOADERS: Mapping[Family, str] = {
    "open_clip": "searchengine.models.clip:load_open_clip",
    "lite": "searchengine.models.lite:load_lite_encoder",
    "itm": "searchengine.models.itm:load_itm",
    "blip": "searchengine.models.vlm:load_vlm",
}


@dataclass(frozen=True)
class ParsedSpec:
    """``model_name`` and ``pretrained`` as open_clip's factory takes them."""

    spec: str
    model_name: str
    pretrained: str | None


@dataclass(frozen=True)
class EncoderSpec:
    """A dual encoder spec resolved: ``parsed`` for open_clip, ``folder`` for lite."""

    spec: str
    family: Literal["open_clip", "lite"]
    parsed: ParsedSpec | None = None
    folder: Path | None = None


@dataclass(frozen=True)
class StageSpec:
    """A stage model spec resolved: an ITM ``folder``, or a BLIP model (``spec`` as given)."""

    task: StageTask
    spec: str
    family: Literal["itm", "blip"]
    folder: Path | None = None


def loader(family: Family) -> Callable[..., Any]:
    """The function that loads ``family`` (its module imported now)."""
    module, _, name = LOADERS[family].partition(":")
    return getattr(importlib.import_module(module), name)


# -- folders -------------------------------------------------------------------------------------
def _strip_local_dir(spec: str) -> str:
    return spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec


def is_lite_dir(path: Path) -> bool:
    return (Path(path) / LITE_MARKER).is_file()


def is_itm_dir(path: Path) -> bool:
    return (Path(path) / ITM_MARKER).is_file()


def lite_folder(spec: str) -> Path | None:
    """The folder of a lite spec: a preset (``lite``), or ``local-dir:`` a lite folder; else None."""
    spec = spec.strip()
    if spec in ENCODER_PRESETS:
        return ENCODER_PRESETS[spec]
    if spec.startswith("local-dir:"):
        folder = Path(_strip_local_dir(spec)).expanduser()
        return folder if is_lite_dir(folder) else None
    return None


def itm_folder(spec: str) -> Path | None:
    """The folder of an ITM reranker spec (``local-dir:`` prefix optional); None if it is not one."""
    folder = Path(_strip_local_dir(spec.strip())).expanduser()
    return folder if is_itm_dir(folder) else None


def local_path(spec: str) -> Path | None:
    """The local path ``spec`` names (``local-dir:`` prefix optional), or None for a Hugging Face id
    (``org/name``): a path exists, starts with ``/``, ``.`` or ``~``, or has more than one ``/``."""
    text = spec.strip()
    if text.startswith("local-dir:"):
        return Path(_strip_local_dir(text)).expanduser()
    path = Path(text).expanduser()
    if path.exists() or text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1:
        return path
    return None


# -- dual encoders -------------------------------------------------------------------------------
def parse_spec(spec: str) -> ParsedSpec:
    """Split a model spec in open_clip's forms.

    ``ARCH:TAG``, ``ARCH:/path/to/weights``, ``hf-hub:org/repo`` and ``local-dir:/path``.
    A bare ``ARCH`` names no weights and is refused: random weights would make every
    load of the collection's model a different model.
    """
    spec = spec.strip()
    if not spec:
        raise ConfigError("empty model spec")
    if spec.startswith(("hf-hub:", "local-dir:")):
        schema, _, rest = spec.partition(":")
        if not rest:
            raise ConfigError(f"model spec {spec!r} names no {schema} location")
        if schema == "local-dir":
            return ParsedSpec(spec, f"local-dir:{Path(rest).expanduser()}", None)
        return ParsedSpec(spec, spec, None)
    arch, sep, pretrained = spec.partition(":")
    if not sep or not pretrained:
        raise ConfigError(
            f"model spec {spec!r} names no weights; use ARCH:TAG (e.g. ViT-B-32:laion2b_s34b_b79k), "
            "ARCH:/path/to/weights, hf-hub:org/repo or local-dir:/path"
        )
    if pretrained.startswith("~"):
        pretrained = str(Path(pretrained).expanduser())
    return ParsedSpec(spec, arch, pretrained)


def resolve_encoder(spec: str) -> EncoderSpec:
    """A lite model (a preset or a lite folder), else an open_clip spec (:func:`parse_spec`)."""
    folder = lite_folder(spec)
    if folder is not None:
        return EncoderSpec(spec, "lite", folder=folder)
    return EncoderSpec(spec, "open_clip", parsed=parse_spec(spec))


def canonical_spec(spec: str) -> str:
    """A spec as recorded in a collection: local paths made absolute so any cwd can use it."""
    spec = spec.strip()
    if spec.startswith("local-dir:"):
        return "local-dir:" + str(Path(_strip_local_dir(spec)).expanduser().resolve())
    if spec.startswith("hf-hub:") or spec in ENCODER_PRESETS:
        return spec
    arch, sep, rest = spec.partition(":")
    if sep and (rest.startswith(("/", ".", "~")) or os.sep in rest) and Path(rest).expanduser().exists():
        return f"{arch}:{Path(rest).expanduser().resolve()}"
    return spec


# -- stage models --------------------------------------------------------------------------------
def stage_spec(task: StageTask, spec: str | None, models: StageModels) -> str:
    """The spec a stage runs: ``spec`` if given, else ``models``' choice, else :data:`STAGE_DEFAULTS`.

    A stage with no default and nothing named raises :class:`ModelLoadError` saying what to pass.
    """
    if task not in STAGE_DEFAULTS:
        raise ConfigError(f"unknown stage {task!r}: use one of {', '.join(STAGE_DEFAULTS)}")
    chosen = spec or getattr(models, task) or None
    if chosen is not None and chosen.strip() in STAGE_DEFAULT_ALIASES[task] and itm_folder(chosen) is None:
        chosen = None
    chosen = chosen or STAGE_DEFAULTS[task]
    if chosen is None:
        option, env, what = STAGE_OPTIONS[task]
        raise ModelLoadError(f"no {task} model ships with searchengine: pass {option} (or set {env}): {what}")
    return chosen


def resolve_stage(task: StageTask, spec: str) -> StageSpec:
    """An ITM folder (reranking only), else a BLIP model of the stage's task."""
    if not spec or not spec.strip():
        raise ConfigError(f"empty {task} model spec")
    folder = itm_folder(spec) if task == "rerank" else None
    if folder is not None:
        return StageSpec(task, spec, "itm", folder)
    return StageSpec(task, spec, "blip")


def load_stage(task: StageTask, spec: str, device: str = "auto") -> Any:
    """Load the model of a stage named by ``spec`` (see :func:`resolve_stage`) on ``device``."""
    resolved = resolve_stage(task, spec)
    if resolved.family == "itm":
        return loader("itm")(str(resolved.folder), device)
    return loader("blip")(resolved.spec, _BLIP_TASKS[task], device)
