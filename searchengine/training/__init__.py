"""Offline tooling: training data, contrastive and ITM training, evaluation. Serving code never imports it.

The names below load their module on first use, so ``import searchengine.training.datasets`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = [
    "Pair", "load_pairs", "load_labelled", "split_pairs",
    "TrainOptions", "TrainReport", "EpochStats", "train",
    "ItmOptions", "ItmReport", "ItmEpoch", "train_itm",
    "RetrievalReport", "ZeroShotReport", "evaluate_retrieval", "evaluate_zeroshot", "recall_at",
    "FeatureCache",
]

_MODULES = {
    "datasets": ("Pair", "load_pairs", "load_labelled", "split_pairs"),
    "contrastive": ("TrainOptions", "TrainReport", "EpochStats", "train"),
    "itm": ("ItmOptions", "ItmReport", "ItmEpoch", "train_itm"),
    "evaluate": ("RetrievalReport", "ZeroShotReport", "evaluate_retrieval", "evaluate_zeroshot", "recall_at"),
    "features": ("FeatureCache",),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}

if TYPE_CHECKING:  # pragma: no cover
    from .contrastive import EpochStats, TrainOptions, TrainReport, train
    from .datasets import Pair, load_labelled, load_pairs, split_pairs
    from .evaluate import RetrievalReport, ZeroShotReport, evaluate_retrieval, evaluate_zeroshot, recall_at
    from .features import FeatureCache
    from .itm import ItmEpoch, ItmOptions, ItmReport, train_itm


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'searchengine.training' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
