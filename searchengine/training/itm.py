"""Training the in-house cross-attention ITM reranker (:mod:`searchengine.models.itm`).

The lite towers stay locked: each image's feature map and each caption's token states are computed
once and cached on disk (:mod:`.features`: one ``.npy`` per item, named by content hash, so a crash loses
nothing).
The dual encoder then mines hard negatives, as ALBEF and BLIP do: for every caption, images it
ranks high that are not the caption's image; for every image, captions it ranks high that are not
its own. Each step scores a positive pair, a hard-negative image and a hard-negative caption with
binary cross-entropy. The epoch whose reranking of the validation split's dual-encoder top
``rerank_top`` is best (recall@1, text->image) is kept.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..models.clip import select_device
from .datasets import Pair
from .features import FeatureCache, image_features, text_features
from .loop import one_cycle, split_for_training
from .metrics import caption_key, first_captions

__all__ = ["ItmOptions", "ItmReport", "ItmEpoch", "train_itm"]


@dataclass(frozen=True)
class ItmOptions:
    epochs: int = 10
    lr: float = 3e-4
    weight_decay: float = 0.05
    batch_size: int = 64
    negatives_from: int = 16  # hard negatives are drawn from the dual encoder's top this many
    rerank_top: int = 20  # validation reranks the dual encoder's top this many
    val_fraction: float = 0.1
    seed: int = 0
    max_captions: int = 1  # captions per image used (the first ones)
    dim: int = 256
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or self.negatives_from < 1 or self.rerank_top < 2:
            raise ConfigError("need epochs >= 1, batch size >= 2, a positive learning rate, "
                              "negatives from >= 1 and rerank top >= 2")


@dataclass
class ItmEpoch:
    epoch: int
    loss: float
    recall_at_1: float  # validation text->image recall@1 after reranking
    seconds: float


@dataclass
class ItmReport:
    base: str
    out: str
    train_pairs: int
    val_pairs: int
    rerank_top: int
    dual_recall_at_1: float = 0.0  # validation, the dual encoder alone
    epochs: list[ItmEpoch] = field(default_factory=list)
    best_epoch: int = 0
    recall_at_1: float = 0.0  # validation, reranked by the best epoch
    skipped_images: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Split:
    patches: Any  # torch float16 (n_images, P, 1280)
    states: Any  # torch float16 (n_texts, L, 384)
    mask: Any  # torch long (n_texts, L)
    owner: np.ndarray  # (n_texts,) the image of each caption
    positives: list[set[int]]  # per caption: every image that is a right answer
    image_vecs: Any = None  # the dual encoder's vectors
    text_vecs: Any = None


# -- features -------------------------------------------------------------------------------------
def _split_data(model: Any, pairs: Sequence[Pair], max_captions: int, cache: FeatureCache,
                progress: Callable[[int], None] | None) -> tuple[_Split, int]:
    """One split's cached features, right answers and dual-encoder vectors; and how many images were skipped."""
    import torch

    feats, keys = image_features([p.image for p in pairs], lambda images: model.image_features(images).cpu().numpy(),
                                 model.image_size, cache, batch=32, progress=progress)
    ok = [i for i, f in enumerate(feats) if f is not None]
    texts, owner = [], []
    for j, i in enumerate(ok):
        for caption in pairs[i].captions[:max_captions]:
            texts.append(caption)
            owner.append(j)
    padded, mask = _pad(text_features(texts, lambda chunk: _token_states(model, chunk), cache, batch=256))
    split = _Split(torch.from_numpy(np.stack([feats[i] for i in ok])) if ok else torch.zeros(0),
                   torch.from_numpy(padded), torch.from_numpy(mask), np.array(owner, np.int64),
                   _positives([keys[i] for i in ok], texts, owner))  # type: ignore[arg-type]
    with torch.inference_mode():
        split.image_vecs = torch.cat([model.image_vectors(split.patches[s : s + 256].to(model.device)).cpu()
                                      for s in range(0, len(ok), 256)])
        split.text_vecs = torch.cat([model.text_vectors(split.states[s : s + 512].to(model.device),
                                                        split.mask[s : s + 512].to(model.device)).cpu()
                                     for s in range(0, len(texts), 512)])
    return split, len(pairs) - len(ok)


def _token_states(model: Any, texts: list[str]) -> list[np.ndarray]:
    """Each text's token states (L_i, 384), float16, padding cut off."""
    states, mask = model.text_features(texts)
    return [s[: int(m.sum())] for s, m in zip(states.cpu().numpy(), mask.cpu().numpy())]


def _pad(states: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Token states padded to one length, and the mask of the real tokens."""
    width = max((len(s) for s in states), default=1)
    padded = np.zeros((len(states), width, states[0].shape[1] if states else 384), np.float16)
    mask = np.zeros((len(states), width), np.int64)
    for n, s in enumerate(states):
        padded[n, : len(s)] = s
        mask[n, : len(s)] = 1
    return padded, mask


def _positives(image_keys: list[str], texts: list[str], owner: list[int]) -> list[set[int]]:
    """Per caption, its right answers: the same image bytes, or a caption of the same text (as evaluation
    counts them)."""
    by_key: dict[str, set[int]] = {}
    by_text: dict[str, set[int]] = {}
    for j, key in enumerate(image_keys):
        by_key.setdefault(key, set()).add(j)
    for t, j in zip(texts, owner):
        by_text.setdefault(caption_key(t), set()).add(j)
    return [by_key[image_keys[j]] | by_text[caption_key(t)] for t, j in zip(texts, owner)]


def _hard_negatives(sims: np.ndarray, positives: list[set[int]], k: int) -> np.ndarray:
    """Per row, the ``k`` best-scoring columns that are not among the row's positives (-1 pads)."""
    order = np.argsort(-sims, axis=1, kind="stable")
    out = np.full((len(sims), k), -1, np.int64)
    for r, row in enumerate(order):
        negs = [int(c) for c in row[: k + len(positives[r]) + 1] if c not in positives[r]][:k]
        out[r, : len(negs)] = negs
    return out


# -- training -------------------------------------------------------------------------------------
def _logits(head: Any, model: Any, data: _Split, image_idx: Any, text_idx: Any) -> Any:
    dev = model.device
    patches = data.patches[image_idx].to(dev)
    states, mask = data.states[text_idx].to(dev), data.mask[text_idx].to(dev)
    dual = (data.image_vecs[image_idx] * data.text_vecs[text_idx]).sum(-1).to(dev)
    return head(patches, states, mask, dual)


def _rerank_recall(head: Any, model: Any, data: _Split, top: int) -> tuple[float, float]:
    """Validation recall@1 of each image's first caption: the dual encoder alone, and reranked."""
    import torch

    first = first_captions(data.owner, len(data.patches))
    sims = (data.text_vecs[first] @ data.image_vecs.T).numpy()
    dual_hits, rerank_hits = 0, 0
    head.eval()
    with torch.inference_mode():
        for q, t in enumerate(first):
            cand = np.argsort(-sims[q], kind="stable")[:top]
            logits = _logits(head, model, data, torch.from_numpy(cand), torch.full((len(cand),), t))
            best = cand[int(torch.argmax(logits.float()).item())]  # argmax: the first of equal scores
            dual_hits += int(cand[0]) in data.positives[t]
            rerank_hits += int(best) in data.positives[t]
    head.train()
    return dual_hits / len(first), rerank_hits / len(first)


def train_itm(pairs: Sequence[Pair], *, out: Path, base: str = "lite", options: ItmOptions = ItmOptions(),
              device: str = "auto", cache_dir: Path | None = None, val_pool: Sequence[Pair] | None = None,
              on_epoch: Callable[[ItmEpoch], None] | None = None,
              progress: Callable[[int], None] | None = None) -> ItmReport:
    """Train an ITM reranker on image-caption ``pairs`` and save it in ``out``."""
    import torch

    from ..models.itm import CrossAttentionITM, ItmConfig, LiteItmReranker, save_itm  # imports torch
    from ..models.lite import resolve_lite  # imports torch

    if resolve_lite(base) is None:
        raise ConfigError(f"the ITM reranker is trained over a lite model's towers; {base!r} is not one")
    train_pairs, val_pairs = split_for_training(pairs, options.val_fraction, options.seed, options.max_captions,
                                                val_pool)
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    probe = CrossAttentionITM(ItmConfig(base=base))
    model = LiteItmReranker(base, probe, select_device(device))
    with torch.inference_mode():
        side = model.image_features([_blank(model.image_size)]).shape[1]
    cfg = ItmConfig(base=base, dim=options.dim, layers=options.layers, heads=options.heads,
                    dropout=options.dropout, patches=side)
    head = CrossAttentionITM(cfg).to(model.device)
    lite_cfg = model.lite.cfg
    cache = FeatureCache.files(cache_dir / f"itm-{lite_cfg.variant}-{lite_cfg.resize_mode}-{cfg.context_length}"
                               if cache_dir else None)
    train, skipped = _split_data(model, train_pairs, options.max_captions, cache, progress)
    val, skipped_val = _split_data(model, val_pairs, options.max_captions, cache, progress)
    if len(val.patches) < 2 or len(train.patches) < 2:
        raise ConfigError("too few readable images to train and validate the reranker")
    report = ItmReport(base=base, out=str(out), train_pairs=len(train.patches), val_pairs=len(val.patches),
                       rerank_top=options.rerank_top, skipped_images=skipped + skipped_val)
    report.dual_recall_at_1, report.recall_at_1 = _rerank_recall(head, model, val, options.rerank_top)
    best = {k: v.detach().clone() for k, v in head.state_dict().items()}
    _fit(head, model, train, val, options, report, on_epoch, best)
    save_itm(head.cpu(), Path(out))
    report.seconds = time.perf_counter() - started
    (Path(out) / "training.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report


def _mine_negatives(train: _Split, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per caption, hard-negative images; per image, hard-negative captions (by the dual encoder)."""
    sims = (train.text_vecs @ train.image_vecs.T).numpy()
    neg_images = _hard_negatives(sims, train.positives, k)
    own_captions = [set(np.flatnonzero(train.owner == j).tolist()) | {t for t, pos in enumerate(train.positives)
                                                                     if j in pos}
                    for j in range(len(train.patches))]
    return neg_images, _hard_negatives(sims.T, own_captions, k)


def _fit(head: Any, model: Any, train: _Split, val: _Split, opts: ItmOptions, report: ItmReport,
         on_epoch: Callable[[ItmEpoch], None] | None, best: dict) -> None:
    """Train ``head`` for ``opts.epochs``; it ends with the weights of the best epoch (``best``)."""
    import torch

    neg_images, neg_texts = _mine_negatives(train, opts.negatives_from)
    opt = torch.optim.AdamW(head.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    sched = one_cycle(opt, opts.lr, opts.epochs * math.ceil(len(train.owner) / opts.batch_size))
    rng = np.random.default_rng(opts.seed)
    best_score = report.recall_at_1
    head.train()
    for epoch in range(1, opts.epochs + 1):
        t0, losses = time.perf_counter(), []
        order = rng.permutation(len(train.owner))
        for s in range(0, len(order), opts.batch_size):
            texts = order[s : s + opts.batch_size]
            images = train.owner[texts]
            neg_i = _pick(neg_images[texts], rng)
            neg_t = _pick(neg_texts[images], rng)
            keep_i, keep_t = neg_i >= 0, neg_t >= 0
            image_idx = np.concatenate([images, neg_i[keep_i], images[keep_t]])
            text_idx = np.concatenate([texts, texts[keep_i], neg_t[keep_t]])
            labels = torch.cat([torch.ones(len(texts)), torch.zeros(int(keep_i.sum() + keep_t.sum()))])
            logits = _logits(head, model, train, torch.from_numpy(image_idx), torch.from_numpy(text_idx))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.to(logits.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        _, r1 = _rerank_recall(head, model, val, opts.rerank_top)
        stats = ItmEpoch(epoch, float(np.mean(losses)) if losses else float("nan"), r1, time.perf_counter() - t0)
        report.epochs.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        if r1 > best_score:
            best_score, report.best_epoch, report.recall_at_1 = r1, epoch, r1
            best.update({k: v.detach().clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best)
    head.eval()


def _pick(candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of each row's valid (>= 0) candidates, uniformly; -1 where a row has none."""
    valid = candidates >= 0
    counts = valid.sum(axis=1)
    choice = (rng.random(len(candidates)) * np.maximum(counts, 1)).astype(np.int64)
    out = np.where(counts > 0, candidates[np.arange(len(candidates)), np.minimum(choice, candidates.shape[1] - 1)], -1)
    return out


def _blank(size: int) -> Image.Image:
    return Image.new("RGB", (size, size), (255, 255, 255))
