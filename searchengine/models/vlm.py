"""BLIP vision-language models behind one class and one verb per task.

=======  ======================================  ===============================================
task     class (transformers model)              verb
=======  ======================================  ===============================================
itm      :class:`BlipMatcher`                    ``score(text, images)``, ``rank(query, candidates)``
         (``BlipForImageTextRetrieval``)
caption  :class:`BlipCaptioner`                  ``generate(images)``
         (``BlipForConditionalGeneration``)
vqa      :class:`BlipAnswerer`                   ``predict_answers(images, question)``
         (``BlipForQuestionAnswering``)
=======  ======================================  ===============================================

:func:`load_vlm` takes a Hugging Face id (``Salesforce/blip-itm-base-coco``) or a folder written by
``save_pretrained`` (the model and its ``BlipProcessor``; ``local-dir:`` optional, see :mod:`.registry`); the
processor travels with the model. Nothing is loaded at import; ``transformers`` is imported on first load.
With ``HF_HUB_OFFLINE`` set only local files are used. Images are PIL images or paths (opened with :func:`~searchengine.imaging.safe_open`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Literal, Sequence, Union, overload

import numpy as np

from ..errors import ConfigError, ModelLoadError, QueryError
from ..imaging import safe_open, to_rgb
from .backbones import quiet_hf_progress
from .device import select_device
from .hub import hub_offline
from .registry import local_path

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

__all__ = ["BlipAnswerer", "BlipCaptioner", "BlipMatcher", "ImageInput", "VlmTask", "load_vlm"]

VlmTask = Literal["itm", "caption", "vqa"]
ImageInput = Union["Image.Image", str, "os.PathLike[str]"]

# task -> (transformers class, the CLI option that takes the model, an example folder)
_TASKS: dict[str, tuple[str, str, str]] = {
    "itm": ("BlipForImageTextRetrieval", "--rerank-model", "/path/to/blip-itm"),
    "caption": ("BlipForConditionalGeneration", "--caption-model", "/path/to/blip-caption"),
    "vqa": ("BlipForQuestionAnswering", "--vqa-model", "/path/to/blip-vqa"),
}
_LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, KeyError)


class _BlipModel:
    """A loaded BLIP model with its processor: device placement and batching shared by the tasks."""

    task: ClassVar[VlmTask]
    name: ClassVar[str]

    def __init__(self, spec: str, model: Any, processor: Any, device: str, batch_size: int = 16) -> None:
        self.spec = spec
        self.model = model
        self.processor = processor
        self.device = device
        self.batch_size = batch_size
        self.dtype = model.dtype
        self.max_text_tokens = int(model.config.text_config.max_position_embeddings)

    def _batches(self, images: Sequence[ImageInput]) -> Iterator[list["Image.Image"]]:
        """RGB images in batches of ``batch_size``; paths are opened one batch at a time."""
        for start in range(0, len(images), self.batch_size):
            yield [_rgb(image) for image in images[start : start + self.batch_size]]

    def _inputs(self, images: list["Image.Image"], text: str | None = None) -> dict[str, Any]:
        """The processor's tensors on the model's device; ``text`` (if any) is paired with every image."""
        extra: dict[str, Any] = {}
        if text is not None:
            extra = {"text": [text] * len(images), "truncation": True, "max_length": self.max_text_tokens}
        batch = self.processor(images=images, return_tensors="pt", **extra)
        return {key: value.to(self.device, dtype=self.dtype) if key == "pixel_values" else value.to(self.device)
                for key, value in batch.items()}

    def _generate(self, images: Sequence[ImageInput], text: str | None, **options: Any) -> list[str]:
        import torch

        texts: list[str] = []
        with torch.inference_mode():
            for batch in self._batches(images):
                ids = self.model.generate(**self._inputs(batch, text), **options)
                texts.extend(t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True))
        return texts


class BlipMatcher(_BlipModel):
    """Image-text matching (BLIP's ITM head): the probability that a text describes an image."""

    task = "itm"
    name = "blip-itm"

    def score(self, text: str, images: Sequence[ImageInput]) -> np.ndarray:
        """float32 ``(n,)`` match probabilities of ``text`` with each image, in ``[0, 1]``."""
        import torch

        _require_text(text, "query")
        if len(images) == 0:
            return np.zeros(0, dtype=np.float32)
        parts = []
        with torch.inference_mode():
            for batch in self._batches(images):
                out = self.model(**self._inputs(batch, text), use_itm_head=True)
                parts.append(out.itm_score.float().softmax(dim=-1)[:, 1].cpu().numpy())
        return np.concatenate(parts).astype(np.float32, copy=False)

    def rank(self, query: str, candidates: Sequence[tuple[int, ImageInput]],
             top_k: int | None = None) -> list[tuple[int, float]]:
        """Rerank ``(id, image)`` candidates: ``(id, probability)`` best first (ties keep input order)."""
        if top_k is not None and top_k < 0:
            raise ConfigError(f"top_k must be >= 0, not {top_k}")
        _require_text(query, "query")
        if len(candidates) == 0:
            return []
        return rank_by_scores(candidates, self.score(query, [image for _, image in candidates]), top_k)


class BlipCaptioner(_BlipModel):
    """Image captioning; with a ``prompt`` the caption continues it (and starts with it)."""

    task = "caption"
    name = "blip-caption"

    def generate(self, images: Sequence[ImageInput], *, prompt: str | None = None, max_new_tokens: int = 30,
                 num_beams: int = 3) -> list[str]:
        """One caption per image, by beam search."""
        if len(images) == 0:
            return []
        return self._generate(images, prompt or None, max_new_tokens=max_new_tokens, num_beams=num_beams)


class BlipAnswerer(_BlipModel):
    """Visual question answering: one short answer per image."""

    task = "vqa"
    name = "blip-vqa"

    def predict_answers(self, images: Sequence[ImageInput], question: str, *, max_new_tokens: int = 10) -> list[str]:
        """The answer to ``question`` about each image."""
        _require_text(question, "question")
        if len(images) == 0:
            return []
        return self._generate(images, question, max_new_tokens=max_new_tokens)


_CLASSES: dict[str, type[_BlipModel]] = {"itm": BlipMatcher, "caption": BlipCaptioner, "vqa": BlipAnswerer}


@overload
def load_vlm(spec: str, task: Literal["itm"], device: str = ..., batch_size: int = ...) -> BlipMatcher: ...
@overload
def load_vlm(spec: str, task: Literal["caption"], device: str = ..., batch_size: int = ...) -> BlipCaptioner: ...
@overload
def load_vlm(spec: str, task: Literal["vqa"], device: str = ..., batch_size: int = ...) -> BlipAnswerer: ...


def load_vlm(spec: str, task: VlmTask, device: str = "auto",
             batch_size: int = 16) -> BlipMatcher | BlipCaptioner | BlipAnswerer:
    """Load the BLIP model of ``task`` named by ``spec`` (float16 on CUDA); errors say what to pass instead."""
    if task not in _CLASSES:
        raise ConfigError(f"unknown BLIP task {task!r}: use itm, caption or vqa")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, not {batch_size}")
    resolved = select_device(device)
    source = _locate(spec, task)
    model, processor = _load(source, spec, task, resolved)
    return _CLASSES[task](spec, model, processor, resolved, batch_size)  # type: ignore[return-value]


# -- loading ---------------------------------------------------------------------------------------
def _hint(task: str) -> str:
    cls, option, example = _TASKS[task]
    return f"pass a folder made by save_pretrained ({cls} + BlipProcessor), e.g. {option} {example}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def _locate(spec: str, task: str) -> str:
    """The folder or hub id to load from, after checking its config.json names a BLIP model of ``task``."""
    text = spec.strip()
    if not text:
        raise ConfigError(f"empty BLIP model spec; {_hint(task)}")
    path = local_path(text)
    if path is not None:
        if not path.is_dir():
            raise ModelLoadError(f"BLIP model folder {spec!r} does not exist; {_hint(task)}")
        config_file, source = path / "config.json", str(path)
        if not config_file.is_file():
            raise ModelLoadError(f"{path} has no config.json, so it is not a model folder; {_hint(task)}")
    else:
        from transformers.utils import cached_file

        try:
            config_file, source = Path(cached_file(text, "config.json", local_files_only=hub_offline())), text
        except _LOAD_ERRORS as exc:
            raise _not_found(spec, task, exc) from exc
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the config of BLIP model {spec!r}: {_first_line(exc)}") from exc
    _check_task(config if isinstance(config, dict) else {}, spec, task)
    return source


def _check_task(config: dict[str, Any], spec: str, task: str) -> None:
    expected = _TASKS[task][0]
    if config.get("model_type") != "blip":
        raise ModelLoadError(f"{spec!r} is not a BLIP model (model_type {config.get('model_type')!r}); {_hint(task)}")
    architectures = config.get("architectures") or []
    if architectures and expected not in architectures:
        other = next((t for t, (cls, _, _) in _TASKS.items() if cls in architectures), None)
        what = f"a BLIP {other} model ({architectures[0]})" if other else f"a {architectures[0]}"
        raise ModelLoadError(f"{spec!r} is {what}, not a BLIP {task} model; {_hint(task)}")


def _not_found(spec: str, task: str, exc: BaseException) -> ModelLoadError:
    if hub_offline():
        why = "is not in the Hugging Face cache (offline)"
    else:
        why = f"cannot be downloaded ({_first_line(exc)})"
    return ModelLoadError(f"BLIP model {spec!r} is not a local folder and {why}; {_hint(task)}")


def _load(source: str, spec: str, task: str, device: str) -> tuple[Any, Any]:
    import torch
    import transformers
    from safetensors import SafetensorError

    model_class = getattr(transformers, _TASKS[task][0])
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    local = Path(source).is_dir()
    try:
        with quiet_hf_progress():
            model, info = model_class.from_pretrained(source, dtype=dtype, local_files_only=hub_offline(),
                                                      output_loading_info=True)
            processor = transformers.BlipProcessor.from_pretrained(source, local_files_only=hub_offline())
    except (*_LOAD_ERRORS, SafetensorError) as exc:
        if not local and isinstance(exc, OSError):
            raise _not_found(spec, task, exc) from exc
        raise ModelLoadError(f"cannot load BLIP {task} model {spec!r}: {_first_line(exc)}") from exc
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise ModelLoadError(f"{spec!r} lacks {len(missing)} weights of a BLIP {task} model (e.g. {missing[0]}); "
                             f"{_hint(task)}")
    return model.to(device).eval(), processor


def rank_by_scores(candidates: Sequence[tuple[int, Any]], scores: np.ndarray,
                   top_k: int | None = None) -> list[tuple[int, float]]:
    """``(id, score)`` of the candidates, best first (ties keep input order), cut to ``top_k``."""
    order = np.argsort(-np.asarray(scores), kind="stable")[:top_k]
    return [(int(candidates[i][0]), float(scores[i])) for i in order]


def _require_text(text: str, what: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise QueryError(f"empty {what}")


def _rgb(image: ImageInput) -> "Image.Image":
    if isinstance(image, (str, os.PathLike)):
        return safe_open(image)
    return to_rgb(image)
