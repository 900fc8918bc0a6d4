"""Contrastive fine-tuning (CLIP's symmetric InfoNCE with a learnable temperature): the entry point.

Two paths behind :func:`train`:

- ``lite`` (or a lite folder): both towers locked (LiT); their features are computed once and
  cached on disk, so an epoch is a few matrix products. The projections and the temperature are
  trained; the ensemble weight with the ConSE branch is then chosen on the validation split
  (:mod:`.lite_heads`).
- any other open_clip model: by default the image tower is locked and its embeddings cached; the
  text tower (unless ``lock_text``) and the temperature are trained; ``unlock_image`` trains the
  image tower too (from decoded pixels kept in memory). Saved as a ``local-dir:`` model
  (:mod:`.clip_towers`).

Every epoch reports validation recall@k; the best epoch's weights are kept (:mod:`.loop`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ConfigError
from .clip_towers import train_clip_towers
from .datasets import Pair
from .lite_heads import train_lite_heads
from .loop import EpochStats, TrainOptions, TrainReport, info_nce, one_cycle, split_for_training
from .metrics import retrieval_recall

__all__ = ["TrainOptions", "TrainReport", "EpochStats", "train", "info_nce", "retrieval_recall", "split_for_training",
           "one_cycle"]


def train(pairs: Sequence[Pair], *, base: str, out: Path, options: TrainOptions | None = None,
          device: str = "auto", cache_dir: Path | None = None, from_scratch: bool = False,
          val_pool: Sequence[Pair] | None = None, on_epoch: Callable[[EpochStats], None] | None = None,
          progress: Callable[[int], None] | None = None) -> TrainReport:
    """Fine-tune ``base`` on ``pairs`` and save the result in ``out`` (a ``local-dir:`` model folder).

    ``from_scratch`` (lite only): start from untrained projections of ``options.variant`` and
    ``options.embed_dim`` instead of the base's trained heads. ``val_pool``: draw the validation
    split from these pairs only (e.g. the in-domain part of a mixed training set); the rest of
    ``pairs`` all go to training.
    """
    options = options or TrainOptions()
    from ..models.lite import resolve_lite  # imports torch

    is_lite = base == "lite" or resolve_lite(base) is not None
    if from_scratch and not is_lite:
        raise ConfigError("--from-scratch applies to lite models only")
    train_pairs, val_pairs = split_for_training(pairs, options.val_fraction, options.seed, options.max_captions,
                                                val_pool)
    report = TrainReport(base=base, out=str(out), train_pairs=len(train_pairs), val_pairs=len(val_pairs))
    started = time.perf_counter()
    if is_lite:
        train_lite_heads(train_pairs, val_pairs, base=base, out=Path(out), opts=options, device=device,
                         cache_dir=cache_dir, report=report, on_epoch=on_epoch, progress=progress,
                         from_scratch=from_scratch)
    else:
        train_clip_towers(train_pairs, val_pairs, base=base, out=Path(out), opts=options, device=device,
                          cache_dir=cache_dir, report=report, on_epoch=on_epoch, progress=progress)
    report.seconds = time.perf_counter() - started
    (Path(out) / "training.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report
