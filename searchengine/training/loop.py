"""What every contrastive training path shares: options and report records, the train/validation split,
the one-cycle schedule, CLIP's loss, the cached locked-tower features and the epoch loop that keeps the
best epoch on validation."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError
from .datasets import Pair, split_pairs
from .features import FeatureCache, image_features, text_features
from .metrics import first_captions

__all__ = ["TrainOptions", "EpochStats", "TrainReport", "Data", "one_cycle", "info_nce", "split_for_training",
           "selection_score", "run_epochs", "contrastive_features", "val_captions"]


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 30
    lr: float = 2e-3
    weight_decay: float = 0.05
    batch_size: int = 256
    val_fraction: float = 0.1
    seed: int = 0
    max_captions: int = 2  # captions per image used (the first ones)
    embed_dim: int = 256  # lite: size of the projected space (per head)
    heads: int = 1  # lite: projection heads trained side by side from different initialisations
    variant: str = "lite2"  # lite: EfficientNet-Lite variant of a new model
    lock_text: bool = False  # open_clip models: train only the temperature and the text projection
    unlock_image: bool = False  # open_clip models: train the image tower too (no feature cache; slow on CPU)
    ks: tuple[int, ...] = (1, 5, 10)
    #: lite: after choosing the epoch count and alpha on validation, train again from the same start on
    #: training + validation pairs for that many epochs (the reported recall stays the held-out one)
    refit: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise ConfigError("need epochs >= 1, batch size >= 2 and a positive learning rate")


@dataclass
class EpochStats:
    epoch: int
    loss: float
    text_to_image: dict[int, float]
    image_to_text: dict[int, float]
    seconds: float


@dataclass
class TrainReport:
    base: str
    out: str
    train_pairs: int
    val_pairs: int
    epochs: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    alpha: float | None = None  # lite: weight of the trained projections against ConSE
    final: dict[str, dict[int, float]] = field(default_factory=dict)
    skipped_images: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Data:
    """One split's training input."""

    img: np.ndarray  # (n, F) cached image features (or embeddings, or pixels)
    captions: list[list[str]]  # per image


def one_cycle(opt: Any, lr: float, steps: int) -> Any:
    """A one-cycle schedule over ``steps`` with about 10% warm-up.

    torch's OneCycleLR divides by zero when the warm-up phase ends exactly on step 0 (10 steps at 10%)
    or fills every step, which short refits hit; the warm-up is kept at two steps or more, below all.
    """
    import torch

    steps = max(int(steps), 1)
    pct = max(0.1, 2.0 / steps) if steps >= 4 else 0.25
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct)


def info_nce(image: Any, text: Any, logit_scale: Any) -> Any:
    """Symmetric cross-entropy over the batch's image-text similarity matrix (CLIP's loss)."""
    import torch

    logits = logit_scale.exp() * image @ text.T
    target = torch.arange(len(image), device=image.device)
    return (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2


def selection_score(t2i: dict[int, float]) -> float:
    """How an epoch (or an ensemble weight) is ranked on validation: text->image recall summed over k."""
    return sum(t2i.values())


def split_for_training(pairs: Sequence[Pair], val_fraction: float, seed: int, max_captions: int,
                       val_pool: Sequence[Pair] | None = None) -> tuple[list[Pair], list[Pair]]:
    """Pairs with captions (cut to ``max_captions``) split by group into training and validation;
    with ``val_pool``, validation comes from those pairs only and all others train."""
    pairs = [Pair(p.image, tuple(p.captions[:max_captions]), p.label, p.group) for p in pairs if p.captions]
    if len(pairs) < 4:
        raise ConfigError("training needs at least 4 images with captions")
    pool = pairs
    if val_pool is not None:
        pool_images = {p.image for p in val_pool}
        pool = [p for p in pairs if p.image in pool_images]
    train_pairs, val_pairs = split_pairs(pool, val_fraction, seed)
    if val_pool is not None:
        held = {id(p) for p in val_pairs}
        train_pairs = [p for p in pairs if id(p) not in held]
    if len(val_pairs) < 2:
        raise ConfigError("the validation split is empty or has one image: raise --val-fraction or add data "
                          "(the best epoch and the reported recall must come from held-out images)")
    return train_pairs, val_pairs


def run_epochs(params: list, step: Callable[[np.ndarray, list[str]], Any], evaluate: Callable[[], tuple] | None,
               snapshot: Callable[[], Any], train: Data, opts: TrainOptions, report: TrainReport,
               on_epoch: Callable[[EpochStats], None] | None) -> Any:
    """Train for ``opts.epochs``; returns the snapshot of the best epoch on validation
    (``evaluate``), or of the last epoch when there is no ``evaluate``."""
    import torch

    scale = [p for p in params if p.ndim == 0]  # the temperature: no weight decay
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 0]},
                             {"params": scale, "weight_decay": 0.0}], lr=opts.lr, weight_decay=opts.weight_decay)
    sched = one_cycle(opt, opts.lr, opts.epochs * math.ceil(len(train.img) / opts.batch_size))
    rng = np.random.default_rng(opts.seed)
    best, best_score = snapshot(), -1.0
    for epoch in range(1, opts.epochs + 1):
        started, losses = time.perf_counter(), []
        order = rng.permutation(len(train.img))
        for s in range(0, len(order), opts.batch_size):
            idx = order[s : s + opts.batch_size]
            if len(idx) < 2:
                continue
            texts = [train.captions[i][rng.integers(len(train.captions[i]))] for i in idx]
            loss = step(idx, texts)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for p in scale:
                    p.clamp_(0, math.log(100))  # CLIP's cap on the logit scale
            losses.append(float(loss.detach()))
        if evaluate is None:
            continue
        t2i, i2t = evaluate()
        stats = EpochStats(epoch, float(np.mean(losses)) if losses else float("nan"), t2i, i2t,
                           time.perf_counter() - started)
        report.epochs.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        if selection_score(t2i) > best_score:
            best, best_score, report.best_epoch = snapshot(), selection_score(t2i), epoch
    return best if evaluate is not None else snapshot()


def contrastive_features(encode_images: Callable[[list], Sequence[np.ndarray]],
                         encode_texts: Callable[[list[str]], Sequence[np.ndarray]] | None, size: int,
                         train_pairs: Sequence[Pair], val_pairs: Sequence[Pair], cache_path: Path | None, batch: int,
                         progress: Callable[[int], None] | None,
                         report: TrainReport) -> tuple[Data, Data, dict[str, np.ndarray]]:
    """Both splits' image features (unreadable images skipped and counted in ``report``) and, with
    ``encode_texts``, every caption's features; cached in ``<cache_path stem>-images.npz`` / ``-texts.npz``."""
    images = FeatureCache.archive(cache_path.with_name(cache_path.stem + "-images.npz") if cache_path else None)
    out = []
    for pairs in (train_pairs, val_pairs):
        feats, _ = image_features([p.image for p in pairs], encode_images, size, images, batch=batch,
                                  progress=progress)
        ok = [i for i, f in enumerate(feats) if f is not None]
        report.skipped_images += len(pairs) - len(ok)
        stacked = np.stack([feats[i] for i in ok]) if ok else np.zeros((0, 0), np.float32)
        out.append(Data(stacked, [list(pairs[i].captions) for i in ok]))  # type: ignore[arg-type]
    images.save()
    if encode_texts is None:  # the text tower is trained: nothing to cache
        return out[0], out[1], {}
    texts_cache = FeatureCache.archive(cache_path.with_name(cache_path.stem + "-texts.npz") if cache_path else None)
    texts = sorted({c for d in out for caps in d.captions for c in caps})
    text_feats = dict(zip(texts, text_features(texts, encode_texts, texts_cache, batch=512)))
    texts_cache.save()
    return out[0], out[1], text_feats


def val_captions(val: Data) -> tuple[list[str], np.ndarray, np.ndarray]:
    """All validation captions, the image each belongs to, and each image's first caption."""
    flat = [c for caps in val.captions for c in caps]
    owner = np.array([i for i, caps in enumerate(val.captions) for _ in caps])
    return flat, owner, np.array(first_captions(owner, len(val.captions)))
