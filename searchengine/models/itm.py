"""An in-house cross-attention image-text matching (ITM) reranker over the lite model's frozen towers.

The dual encoder compares one vector per image with one vector per text; this model looks closer.
The text's MiniLM token states attend to the image's EfficientNet-Lite feature map (a 9x9 grid of
1280-d patch features for lite2) through a few transformer blocks (self-attention over the text,
cross-attention to the patches, feed-forward), as in ALBEF/BLIP's ITM head. The pooled text state
gives a logit; the dual encoder's cosine enters it through a learned weight, so the model learns a
correction to the first stage rather than relevance from scratch. ``sigmoid(logit)`` is the match
probability, trained with binary cross-entropy on positives and hard negatives the dual encoder
mines (:mod:`searchengine.training.itm`), so it reads as a calibrated relevance score.

A model folder holds ``searchengine_itm.json`` (the config) and ``itm.safetensors`` (a few MB); the
towers come from the installed packages, as for ``lite``.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch  # this module is imported only when an ITM model is loaded or trained
from PIL import Image

from ..errors import ModelLoadError
from ..imaging import safe_open, to_rgb
from .backbones import mean_pool
from .device import select_device
from .lite import build_lite, read_config
from .registry import ITM_MARKER as MARKER
from .registry import is_itm_dir, itm_folder, lite_folder
from .vlm import rank_by_scores

__all__ = ["ItmConfig", "CrossAttentionITM", "LiteItmReranker", "is_itm_dir", "load_itm", "save_itm",
           "open_images"]

WEIGHTS = "itm.safetensors"
ImageLike = Union["Image.Image", str, os.PathLike]


@dataclass(frozen=True)
class ItmConfig:
    base: str = "lite"  # the lite dual encoder whose locked towers give the features
    dim: int = 256
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    patches: int = 81  # h * w of the trunk's feature map (9 x 9 for lite2 at 260 px)
    context_length: int = 32
    kind: str = "itm"

    @classmethod
    def from_json(cls, path: Path) -> "ItmConfig":
        return read_config(cls, path, "itm")


class _Block(torch.nn.Module):
    """Pre-norm: text self-attention, text -> image cross-attention, feed-forward."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        nn = torch.nn
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, image, pad):
        h = self.norm1(x)
        x = x + self.drop(self.self_attn(h, h, h, key_padding_mask=pad, need_weights=False)[0])
        h = self.norm2(x)
        x = x + self.drop(self.cross_attn(h, image, image, need_weights=False)[0])
        return x + self.drop(self.ffn(self.norm3(x)))


class CrossAttentionITM(torch.nn.Module):
    """(patches, text states, text mask, dual cosine) -> match logit."""

    def __init__(self, cfg: ItmConfig, image_width: int = 1280, text_width: int = 384) -> None:
        super().__init__()
        nn = torch.nn
        self.cfg = cfg
        self.image_in = nn.Sequential(nn.LayerNorm(image_width), nn.Linear(image_width, cfg.dim))
        self.text_in = nn.Sequential(nn.LayerNorm(text_width), nn.Linear(text_width, cfg.dim))
        self.position = nn.Parameter(torch.zeros(1, cfg.patches, cfg.dim))
        self.blocks = nn.ModuleList(_Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.head = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, cfg.dim), nn.GELU(),
                                  nn.Linear(cfg.dim, 1))
        self.dual_weight = nn.Parameter(torch.tensor(10.0))  # the first stage's cosine, as a logit
        self.bias = nn.Parameter(torch.tensor(-3.0))
        torch.nn.init.normal_(self.position, std=0.02)

    def forward(self, patches, states, mask, dual):
        """``patches`` (n, P, 1280), ``states`` (n, L, 384), ``mask`` (n, L) 1 = token, ``dual`` (n,)."""
        image = self.image_in(patches.float()) + self.position
        x = self.text_in(states.float())
        pad = mask == 0
        for block in self.blocks:
            x = block(x, image, pad)
        keep = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.head(pooled).squeeze(-1) + self.dual_weight * dual.float() + self.bias


def open_images(images: Sequence[ImageLike], size: int) -> list["Image.Image"]:
    """RGB PIL images from PIL images or paths (paths through :func:`searchengine.imaging.safe_open`)."""
    return [to_rgb(im) if isinstance(im, Image.Image) else safe_open(im, draft_size=size) for im in images]


class LiteItmReranker:
    """The reranker: ``rank(query, candidates, top_k)`` -> ``[(id, probability)]``, best first."""

    name = "lite-itm"

    def __init__(self, spec: str, head: CrossAttentionITM, device: str = "cpu", batch_size: int = 32,
                 cache_size: int = 512) -> None:
        folder = lite_folder(head.cfg.base)
        if folder is None:
            raise ModelLoadError(f"the ITM model {spec!r} names the base {head.cfg.base!r}, which is not a lite model")
        self.spec = spec
        self.device = device
        self.batch_size = batch_size
        self.lite, self.preprocess, self.tokenizer = build_lite(folder)
        self.lite.to(device)
        self.head = head.to(device).eval()
        self.image_size = self.lite.visual.image_size
        #: patch features of recently scored files by (path, size, mtime): popular hits are not decoded again
        self._recent: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.cache_size = cache_size

    # -- features (what training caches) --------------------------------------------------
    @torch.inference_mode()
    def image_features(self, images: Sequence["Image.Image"]) -> torch.Tensor:
        """The trunk's feature map as patch rows: float16 ``(n, P, 1280)``."""
        batch = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        fmap = self.lite.trunk.forward_features(batch)
        return fmap.flatten(2).transpose(1, 2).half()

    @torch.inference_mode()
    def text_features(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """MiniLM token states float16 ``(n, L, 384)`` and their mask ``(n, L)``."""
        tokens = self.tokenizer(list(texts))[:, : self.head.cfg.context_length].to(self.device)
        states, mask = self.lite.text_states(tokens)
        return states.half(), mask

    @torch.inference_mode()
    def dual_scores(self, patches: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The lite dual encoder's cosine of each (image, text) row pair, from the same features."""
        return (self.image_vectors(patches) * self.text_vectors(states, mask)).sum(-1)

    def image_vectors(self, patches: torch.Tensor) -> torch.Tensor:
        n, p, c = patches.shape
        side = int(round(p ** 0.5))
        fmap = patches.float().transpose(1, 2).reshape(n, c, side, p // side)
        return self.lite.project_image(self.lite.pooled_features(fmap))

    def text_vectors(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.lite.project_text(torch.nn.functional.normalize(mean_pool(states.float(), mask), dim=-1))

    # -- scoring --------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, text: str, images: Sequence[ImageLike]) -> np.ndarray:
        """Match probabilities of ``text`` with each image: float32 ``(n,)`` in [0, 1]."""
        if len(images) == 0:
            return np.zeros(0, dtype=np.float32)
        states, mask = self.text_features([text])
        out = []
        for start in range(0, len(images), self.batch_size):
            patches = self._patches(images[start : start + self.batch_size])
            n = len(patches)
            s, m = states.expand(n, -1, -1), mask.expand(n, -1)
            logits = self.head(patches, s, m, self.dual_scores(patches, s, m))
            out.append(torch.sigmoid(logits).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def _patches(self, images: Sequence[ImageLike]) -> torch.Tensor:
        keys = [_file_key(im) for im in images]
        todo = [i for i, k in enumerate(keys) if k is None or k not in self._recent]
        fresh = dict(zip(todo, self.image_features(open_images([images[i] for i in todo], self.image_size)))) \
            if todo else {}
        rows = []
        for i, key in enumerate(keys):
            row = fresh[i] if i in fresh else self._recent[key]
            if key is not None:
                self._recent[key] = row
                self._recent.move_to_end(key)
            rows.append(row)
        while len(self._recent) > self.cache_size:
            self._recent.popitem(last=False)
        return torch.stack(rows)

    def rank(self, query: str, candidates: Sequence[tuple[int, ImageLike]],
             top_k: int | None = None) -> list[tuple[int, float]]:
        """Candidates ``(id, image or path)`` by match probability with ``query``, best first."""
        return rank_by_scores(candidates, self.score(query, [image for _, image in candidates]), top_k)


def _file_key(image: ImageLike) -> tuple | None:
    if not isinstance(image, (str, os.PathLike)):
        return None
    try:
        st = os.stat(image)
    except OSError:
        return None  # opening it reports the error
    return (os.fspath(image), st.st_size, st.st_mtime_ns)


def save_itm(head: CrossAttentionITM, folder: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the config and the head's weights."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps(asdict(head.cfg), indent=2) + "\n", encoding="utf-8")
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(folder / WEIGHTS))
    return folder


def load_head(folder: Path) -> CrossAttentionITM:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg = ItmConfig.from_json(folder / MARKER)
    head = CrossAttentionITM(cfg)
    try:
        state = load_file(str(folder / WEIGHTS))
        head.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the ITM weights {folder / WEIGHTS}: {str(exc).splitlines()[0]}") from exc
    return head.eval()


def load_itm(spec: str, device: str = "auto", batch_size: int = 32) -> LiteItmReranker:
    """The ITM reranker in folder ``spec`` (``local-dir:`` prefix optional)."""
    folder = itm_folder(spec)
    if folder is None:
        raise ModelLoadError(f"{spec} is not an ITM model folder (no {MARKER}); train one with "
                             "`searchengine train --itm DATA --out FOLDER`")
    return LiteItmReranker(str(folder.resolve()), load_head(folder), select_device(device), batch_size)
