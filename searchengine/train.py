"""Contrastive fine-tuning (CLIP's symmetric InfoNCE with a learnable temperature).

Two paths behind :func:`train`:

- ``lite`` (or a lite folder): both towers locked (LiT); their features are computed once and
  cached on disk, so an epoch is a few matrix products. The projections and the temperature are
  trained; the ensemble weight with the ConSE branch is then chosen on the validation split.
- any other open_clip model: by default the image tower is locked and its embeddings cached; the
  text tower (unless ``lock_text``) and the temperature are trained; ``unlock_image`` trains the
  image tower too (from decoded pixels kept in memory). Saved as a ``local-dir:`` model.

Every epoch reports validation recall@k; the best epoch's weights are kept.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .datasets import Pair, split_pairs
from .errors import ConfigError, ImageDecodeError
from .evaluate import distinct_owners, recall_at
from .store import content_hash

__all__ = ["TrainOptions", "TrainReport", "EpochStats", "train", "info_nce", "retrieval_recall", "split_for_training"]


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


def one_cycle(opt: Any, lr: float, steps: int) -> Any:
    """A one-cycle schedule over ``steps`` with about 10% warm-up.

    torch's OneCycleLR divides by zero when the warm-up phase ends exactly on step 0 (10 steps at 10%)
    or fills every step, which short refits hit; the warm-up is kept at two steps or more, below all.
    """
    import torch

    steps = max(int(steps), 1)
    pct = max(0.1, 2.0 / steps) if steps >= 4 else 0.25
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct)


def info_nce(image: "Any", text: "Any", logit_scale: "Any") -> "Any":
    """Symmetric cross-entropy over the batch's image-text similarity matrix (CLIP's loss)."""
    import torch

    logits = logit_scale.exp() * image @ text.T
    target = torch.arange(len(image), device=image.device)
    return (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2


def retrieval_recall(image: np.ndarray, text: np.ndarray, owner: np.ndarray, first: np.ndarray,
                     ks: Sequence[int]) -> tuple[dict[int, float], dict[int, float]]:
    """Recall@k both ways for normalised ``image`` (n, d) and ``text`` (m, d) vectors.

    ``owner[j]`` is the image of caption j; ``first[i]`` the caption that queries for image i.
    """
    sims = image @ text.T  # (n, m)
    own = [{i} for i in range(len(image))]
    t2i_rank = np.argsort(-sims[:, first].T, axis=1)  # each image's first caption -> images
    i2t_rank = [distinct_owners(row, owner, max(ks)) for row in np.argsort(-sims, axis=1)]
    return recall_at(t2i_rank.tolist(), own, ks), recall_at(i2t_rank, own, ks)


def _score(t2i: dict[int, float]) -> float:
    return sum(t2i.values())


# -- feature cache ------------------------------------------------------------------------------
class FeatureCache:
    """Features by content key, kept in one .npz per model setting (no pickle)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, np.ndarray] = {}
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as npz:
                self.data = dict(zip(npz["keys"].tolist(), npz["values"]))

    def save(self) -> None:
        if self.path is None or not self.data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(list(self.data)), values=np.stack(list(self.data.values())))
        tmp.replace(self.path)


def _file_key(path: Path) -> str:
    return content_hash(path.read_bytes())


def _text_key(text: str) -> str:
    return "t:" + content_hash(text.encode("utf-8"))


def _image_features(paths: list[Path], encode: Callable, size: int, cache: FeatureCache, batch: int,
                    progress: Callable[[int], None] | None) -> tuple[np.ndarray, list[int]]:
    """Features for each path (via ``cache``); returns (features of the readable ones, their indices)."""
    from .imaging import safe_open

    keys, ok, todo = [], [], []
    for i, path in enumerate(paths):
        try:
            keys.append(_file_key(path))
        except OSError:
            keys.append("")
            continue
        ok.append(i)
        if keys[-1] not in cache.data:
            todo.append(i)
    if progress is not None and len(paths) > len(todo):
        progress(len(paths) - len(todo))  # cached (or unreadable): nothing to compute
    for start in range(0, len(todo), batch):
        chunk, images = [], []
        for i in todo[start : start + batch]:
            try:
                images.append(safe_open(paths[i], draft_size=size))
                chunk.append(i)
            except ImageDecodeError:
                ok.remove(i)
        if images:
            for i, feat in zip(chunk, encode(images)):
                cache.data[keys[i]] = feat
        if progress is not None:
            progress(len(todo[start : start + batch]))
    return (np.stack([cache.data[keys[i]] for i in ok]) if ok else np.zeros((0, 0), np.float32)), ok


# -- the training loop --------------------------------------------------------------------------
@dataclass
class _Data:
    img: np.ndarray  # (n, F) cached image features (or embeddings)
    captions: list[list[str]]  # per image


def _epochs(params: list, step: Callable[[np.ndarray, list[str]], Any], evaluate: Callable[[], tuple] | None,
            snapshot: Callable[[], Any], train: _Data, opts: TrainOptions, report: TrainReport,
            on_epoch: Callable[[EpochStats], None] | None) -> Any:
    """Train for ``opts.epochs``; returns the snapshot of the best epoch on validation
    (``evaluate``), or of the last epoch when there is no ``evaluate``."""
    import torch

    scale = [p for p in params if p.ndim == 0]  # the temperature: no weight decay
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim > 0]},
                             {"params": scale, "weight_decay": 0.0}], lr=opts.lr, weight_decay=opts.weight_decay)
    steps = opts.epochs * math.ceil(len(train.img) / opts.batch_size)
    sched = one_cycle(opt, opts.lr, steps)
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
        if _score(t2i) > best_score:
            best, best_score, report.best_epoch = snapshot(), _score(t2i), epoch
    return best if evaluate is not None else snapshot()


def train(pairs: Sequence[Pair], *, base: str, out: Path, options: TrainOptions = TrainOptions(),
          device: str = "auto", cache_dir: Path | None = None, from_scratch: bool = False,
          val_pool: Sequence[Pair] | None = None, on_epoch: Callable[[EpochStats], None] | None = None,
          progress: Callable[[int], None] | None = None) -> TrainReport:
    """Fine-tune ``base`` on ``pairs`` and save the result in ``out`` (a ``local-dir:`` model folder).

    ``from_scratch`` (lite only): start from untrained projections of ``options.variant`` and
    ``options.embed_dim`` instead of the base's trained heads. ``val_pool``: draw the validation
    split from these pairs only (e.g. the in-domain part of a mixed training set); the rest of
    ``pairs`` all go to training.
    """
    from .models.lite import resolve_lite

    is_lite = base == "lite" or resolve_lite(base) is not None
    if from_scratch and not is_lite:
        raise ConfigError("--from-scratch applies to lite models only")
    train_pairs, val_pairs = split_for_training(pairs, options.val_fraction, options.seed, options.max_captions,
                                                val_pool)
    report = TrainReport(base=base, out=str(out), train_pairs=len(train_pairs), val_pairs=len(val_pairs))
    started = time.perf_counter()
    if is_lite:
        _train_lite(train_pairs, val_pairs, base=base, out=Path(out), opts=options, device=device, cache_dir=cache_dir,
                    report=report, on_epoch=on_epoch, progress=progress, from_scratch=from_scratch)
    else:
        _train_open_clip(train_pairs, val_pairs, base=base, out=Path(out), opts=options, device=device,
                         cache_dir=cache_dir, report=report, on_epoch=on_epoch, progress=progress)
    report.seconds = time.perf_counter() - started
    (Path(out) / "training.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report


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


def _features(model_encode, text_encode, size, train_pairs, val_pairs, cache_path, batch, progress, report):
    cache = FeatureCache(cache_path.with_name(cache_path.stem + "-images.npz") if cache_path else None)
    texts_cache = FeatureCache(cache_path.with_name(cache_path.stem + "-texts.npz") if cache_path else None)
    out = []
    for pairs in (train_pairs, val_pairs):
        feats, ok = _image_features([p.image for p in pairs], model_encode, size, cache, batch, progress)
        report.skipped_images += len(pairs) - len(ok)
        captions = [list(pairs[i].captions) for i in ok]
        out.append(_Data(feats, captions))
    cache.save()
    if text_encode is None:  # the text tower is trained: nothing to cache
        return out[0], out[1], {}
    texts = sorted({c for d in out for caps in d.captions for c in caps})
    missing = [t for t in texts if _text_key(t) not in texts_cache.data]
    for s in range(0, len(missing), 512):
        for t, f in zip(missing[s : s + 512], text_encode(missing[s : s + 512])):
            texts_cache.data[_text_key(t)] = f
    texts_cache.save()
    text_feats = {t: texts_cache.data[_text_key(t)] for t in texts}
    return out[0], out[1], text_feats


def _val_captions(val: _Data) -> tuple[list[str], np.ndarray, np.ndarray]:
    """All validation captions, the image each belongs to, and each image's first caption."""
    flat = [c for caps in val.captions for c in caps]
    owner = np.array([i for i, caps in enumerate(val.captions) for _ in caps])
    first = np.array([int(np.flatnonzero(owner == i)[0]) for i in range(len(val.captions))])
    return flat, owner, first


def _train_lite(train_pairs, val_pairs, *, base, out, opts, device, cache_dir, report, on_epoch, progress,
                from_scratch):
    import torch

    from .models.clip import select_device
    from .models.lite import LiteConfig, build_lite, resolve_lite, save_lite

    dev = select_device(device)
    torch.manual_seed(opts.seed)  # the projections' initialisation: a run is reproducible
    folder = None if from_scratch else resolve_lite(base)
    new_cfg = LiteConfig(variant=opts.variant, embed_dim=opts.embed_dim, heads=opts.heads)
    model, preprocess, tokenizer = build_lite(folder, None if folder else new_cfg)
    model.to(dev)
    cfg = model.cfg

    def enc_images(images):
        batch = torch.stack([preprocess(im) for im in images]).to(dev)
        with torch.inference_mode():
            return model.image_features(batch).cpu().numpy()

    def enc_texts(texts):
        with torch.inference_mode():
            return model.text_features(tokenizer(texts).to(dev)).cpu().numpy()

    cache_path = (cache_dir / f"lite-{cfg.variant}-{cfg.resize_mode}-{cfg.conse_topk}-{cfg.context_length}.npz"
                  if cache_dir else None)
    train, val, text_feats = _features(enc_images, enc_texts, model.visual.image_size, train_pairs, val_pairs,
                                       cache_path, 32, progress, report)
    heads = [model.image_proj.weight, model.text_proj.weight, model.logit_scale]
    for p in heads:
        p.requires_grad_(True)

    def tvec(texts):
        return torch.from_numpy(np.stack([text_feats[t] for t in texts])).to(dev)

    data = train  # what ``step`` trains on (training + validation pairs for a refit)

    def step(idx, texts):  # each head learns on its own; they share the temperature
        img = model.project_image(torch.from_numpy(data.img[idx]).to(dev), branch="heads")
        txt = model.project_text(tvec(texts), branch="heads")
        return sum(info_nce(img[:, h], txt[:, h], model.logit_scale) for h in range(img.shape[1])) / img.shape[1]

    flat, owner, first = _val_captions(val)
    val_text = np.stack([text_feats[t] for t in flat])

    def embed_val(branch):
        with torch.no_grad():
            i = model.project_image(torch.from_numpy(val.img).to(dev), branch=branch).cpu().numpy()
            t = model.project_text(torch.from_numpy(val_text).to(dev), branch=branch).cpu().numpy()
        return i, t

    def evaluate():
        i, t = embed_val("proj")
        return retrieval_recall(i, t, owner, first, opts.ks)

    def snapshot():
        return copy.deepcopy({k: v.detach().clone() for k, v in model.heads_state().items()})

    start = snapshot()
    best = _epochs(heads, step, evaluate, snapshot, train, opts, report, on_epoch)
    _restore(model, best)
    with torch.no_grad():
        report.alpha = _choose_alpha(model, embed_val, owner, first, opts.ks)
        model.alpha.fill_(report.alpha)
    i, t = embed_val("both")
    t2i, i2t = retrieval_recall(i, t, owner, first, opts.ks)
    report.final = {"text_to_image": t2i, "image_to_text": i2t}
    if opts.refit:
        data = _Data(np.concatenate([train.img, val.img]), train.captions + val.captions)
        _restore(model, dict(start, alpha=torch.tensor(report.alpha)))
        refit = _epochs(heads, step, None, snapshot, data, replace(opts, epochs=report.best_epoch),
                        TrainReport(base, str(out), len(data.img), 0), None)
        _restore(model, refit)
    save_lite(model.cpu(), out)


def _restore(model, state: dict) -> None:
    import torch

    with torch.no_grad():
        named = dict(model.named_parameters(), **dict(model.named_buffers()))
        for name, value in state.items():
            named[name].copy_(value)


def _choose_alpha(model, embed_val, owner, first, ks) -> float:
    """The weight of the projections against ConSE that is best on the validation split."""
    best, best_score = 0.0, -1.0
    for a in np.linspace(0, 1, 11):
        model.alpha.fill_(float(a))
        i, t = embed_val("both")
        score = _score(retrieval_recall(i, t, owner, first, ks)[0])
        if score > best_score + 1e-9:
            best, best_score = float(a), score
    return best


def _train_open_clip(train_pairs, val_pairs, *, base, out, opts, device, cache_dir, report, on_epoch, progress):
    import torch

    from .models.clip import load_encoder

    enc = load_encoder(base, device, "fp32")  # training starts from the full-precision weights
    _check_saveable(base)  # fail before the epochs, not after
    model, dev = enc.model.float(), enc.device
    enc.dtype = torch.float32  # trained in fp32 even where the encoder loaded in fp16

    from .imaging import to_rgb
    from .models.clip import fingerprint_id

    if opts.unlock_image:  # keep the decoded pixels (in memory): the image tower is trained too
        def enc_images(images):
            return np.stack([enc.pixels_from_pil(to_rgb(im)) for im in images])
    else:  # LiT: the image tower is locked, its embeddings are computed once and cached on disk
        def enc_images(images):
            return enc.encode_images(images)

    cache_path = None
    if cache_dir is not None and not opts.unlock_image:  # keyed by the weights (probe fingerprint)
        cache_path = cache_dir / f"openclip-{fingerprint_id(enc.probe())}-{enc.image_size}.npz"
    train, val, _ = _features(enc_images, None, enc.image_size, train_pairs, val_pairs, cache_path,
                              32, progress, report)
    for p in model.parameters():
        p.requires_grad_(False)
    text_params = [p for n, p in model.named_parameters() if not n.startswith("visual.") and n != "logit_scale"]
    if opts.lock_text:
        text_params = [p for n, p in model.named_parameters()
                       if n == "text_projection" or n.startswith(("text.proj", "text.text_projection"))]
        if not text_params:
            raise ConfigError(f"--lock-text: found no text projection to train in {base!r}")
    image_params = [p for n, p in model.named_parameters() if n.startswith("visual.")] if opts.unlock_image else []
    params = text_params + image_params + [model.logit_scale]
    for p in params:
        p.requires_grad_(True)
    model.train()

    def encode_text(texts):
        emb = model.encode_text(enc.tokenizer(texts).to(dev))
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def encode_image(rows):
        if not opts.unlock_image:
            return torch.from_numpy(rows).to(dev)
        batch = torch.from_numpy(rows).permute(0, 3, 1, 2).to(dev).float().div(255.0)
        return torch.nn.functional.normalize(model.encode_image(enc.tensor_stage(batch)).float(), dim=-1)

    def step(idx, texts):
        return info_nce(encode_image(train.img[idx]), encode_text(texts), model.logit_scale)

    flat, owner, first = _val_captions(val)

    def evaluate():
        model.eval()
        with torch.no_grad():
            t = encode_text(flat).cpu().numpy()
            i = np.concatenate([encode_image(val.img[s : s + 64]).cpu().numpy() for s in range(0, len(val.img), 64)])
        model.train()
        return retrieval_recall(i, t, owner, first, opts.ks)

    def snapshot():
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    best = _epochs(params, step, evaluate, snapshot, train, opts, report, on_epoch)
    model.load_state_dict(best)
    model.eval()
    t2i, i2t = evaluate()
    report.final = {"text_to_image": t2i, "image_to_text": i2t}
    _save_open_clip(base, model, enc, out)


def _check_saveable(base: str) -> None:
    import open_clip

    from .models.clip import parse_spec

    name = parse_spec(base).model_name
    if not name.startswith("local-dir:") and open_clip.get_model_config(name) is None:
        raise ConfigError(f"cannot save a trained copy of {base!r} (no local open_clip config); "
                          "use a local-dir: or ARCH:/weights spec")


def _save_open_clip(base: str, model, enc, out: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    from .models.clip import parse_spec

    parsed = parse_spec(base)
    if parsed.model_name.startswith("local-dir:"):
        cfg = json.loads((Path(parsed.model_name.split(":", 1)[1]) / "open_clip_config.json").read_text())
    else:
        model_cfg = open_clip.get_model_config(parsed.model_name)
        if model_cfg is None:
            raise ConfigError(f"cannot find the config of {base!r} to save the trained model")
        pre = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        cfg = {"model_cfg": model_cfg, "preprocess_cfg": {k: list(v) if isinstance(v, tuple) else v
                                                          for k, v in pre.items() if k != "size"}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(out / "open_clip_model.safetensors"))
