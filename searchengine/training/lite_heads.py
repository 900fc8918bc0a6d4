"""Contrastive training of a lite model's heads (LiT): both towers locked and their features cached; the
projections and the temperature trained; the ensemble weight with the ConSE branch chosen on validation;
an optional refit on training + validation pairs."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..models.clip import select_device
from .datasets import Pair
from .loop import (
    Data,
    EpochStats,
    TrainOptions,
    TrainReport,
    contrastive_features,
    info_nce,
    run_epochs,
    selection_score,
    val_captions,
)
from .metrics import retrieval_recall

__all__ = ["train_lite_heads"]


class _HeadsRun:
    """One run's model and cached features, and the step, evaluation and snapshot the epoch loop calls."""

    def __init__(self, model: Any, dev: Any, text_feats: dict[str, np.ndarray], train: Data, val: Data,
                 ks: Sequence[int]) -> None:
        self.model, self.dev, self.text_feats, self.ks = model, dev, text_feats, ks
        self.data = train  # what ``step`` trains on (training + validation pairs for a refit)
        self.val_img = val.img
        flat, self.owner, self.first = val_captions(val)
        self.val_text = np.stack([text_feats[t] for t in flat])

    def _texts(self, texts: list[str]) -> Any:
        import torch

        return torch.from_numpy(np.stack([self.text_feats[t] for t in texts])).to(self.dev)

    def step(self, idx: np.ndarray, texts: list[str]) -> Any:
        """Each head learns on its own; they share the temperature."""
        import torch

        model = self.model
        img = model.project_image(torch.from_numpy(self.data.img[idx]).to(self.dev), branch="heads")
        txt = model.project_text(self._texts(texts), branch="heads")
        return sum(info_nce(img[:, h], txt[:, h], model.logit_scale) for h in range(img.shape[1])) / img.shape[1]

    def recall(self, branch: str) -> tuple[dict[int, float], dict[int, float]]:
        """Validation recall@k both ways through ``branch`` ("proj", "heads" or "both")."""
        import torch

        with torch.no_grad():
            i = self.model.project_image(torch.from_numpy(self.val_img).to(self.dev), branch=branch).cpu().numpy()
            t = self.model.project_text(torch.from_numpy(self.val_text).to(self.dev), branch=branch).cpu().numpy()
        return retrieval_recall(i, t, self.owner, self.first, self.ks)

    def evaluate(self) -> tuple[dict[int, float], dict[int, float]]:
        return self.recall("proj")

    def snapshot(self) -> dict:
        return copy.deepcopy({k: v.detach().clone() for k, v in self.model.heads_state().items()})


def train_lite_heads(train_pairs: Sequence[Pair], val_pairs: Sequence[Pair], *, base: str, out: Path,
                     opts: TrainOptions, device: str, cache_dir: Path | None, report: TrainReport,
                     on_epoch: Callable[[EpochStats], None] | None, progress: Callable[[int], None] | None,
                     from_scratch: bool) -> None:
    """Train the heads of ``base`` (or of a new ``opts.variant`` model ``from_scratch``) and save to ``out``."""
    import torch

    from ..models.lite import LiteConfig, build_lite, resolve_lite, save_lite  # imports torch

    dev = select_device(device)
    torch.manual_seed(opts.seed)  # the projections' initialisation: a run is reproducible
    folder = None if from_scratch else resolve_lite(base)
    new_cfg = LiteConfig(variant=opts.variant, embed_dim=opts.embed_dim, heads=opts.heads)
    model, preprocess, tokenizer = build_lite(folder, None if folder else new_cfg)
    model.to(dev)
    cfg = model.cfg
    cache_path = (cache_dir / f"lite-{cfg.variant}-{cfg.resize_mode}-{cfg.conse_topk}-{cfg.context_length}.npz"
                  if cache_dir else None)
    encode_images, encode_texts = _encoders(model, preprocess, tokenizer, dev)
    train, val, text_feats = contrastive_features(encode_images, encode_texts, model.visual.image_size, train_pairs,
                                                  val_pairs, cache_path, 32, progress, report)
    heads = [model.image_proj.weight, model.text_proj.weight, model.logit_scale]
    for p in heads:
        p.requires_grad_(True)
    run = _HeadsRun(model, dev, text_feats, train, val, opts.ks)
    start = run.snapshot()
    _restore(model, run_epochs(heads, run.step, run.evaluate, run.snapshot, train, opts, report, on_epoch))
    with torch.no_grad():
        report.alpha = _choose_alpha(run)
        model.alpha.fill_(report.alpha)
    t2i, i2t = run.recall("both")
    report.final = {"text_to_image": t2i, "image_to_text": i2t}
    if opts.refit:
        run.data = Data(np.concatenate([train.img, val.img]), train.captions + val.captions)
        _restore(model, dict(start, alpha=torch.tensor(report.alpha)))
        refit = run_epochs(heads, run.step, None, run.snapshot, run.data, replace(opts, epochs=report.best_epoch),
                           TrainReport(base, str(out), len(run.data.img), 0), None)
        _restore(model, refit)
    save_lite(model.cpu(), out)


def _encoders(model: Any, preprocess: Callable, tokenizer: Callable, dev: Any) -> tuple[Callable, Callable]:
    """The locked towers' feature functions (PIL images -> array, texts -> array)."""
    import torch

    def encode_images(images: list) -> np.ndarray:
        batch = torch.stack([preprocess(im) for im in images]).to(dev)
        with torch.inference_mode():
            return model.image_features(batch).cpu().numpy()

    def encode_texts(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return model.text_features(tokenizer(texts).to(dev)).cpu().numpy()

    return encode_images, encode_texts


def _restore(model: Any, state: dict) -> None:
    import torch

    with torch.no_grad():
        named = dict(model.named_parameters(), **dict(model.named_buffers()))
        for name, value in state.items():
            named[name].copy_(value)


def _choose_alpha(run: _HeadsRun) -> float:
    """The weight of the projections against ConSE that is best on the validation split."""
    best, best_score = 0.0, -1.0
    for a in np.linspace(0, 1, 11):
        run.model.alpha.fill_(float(a))
        score = selection_score(run.recall("both")[0])
        if score > best_score + 1e-9:
            best, best_score = float(a), score
    return best
