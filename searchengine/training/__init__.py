"""Offline tooling: training data, contrastive and ITM training, evaluation. Serving code never imports it;
nothing here loads torch or a model until a function runs."""

from __future__ import annotations

from .contrastive import EpochStats, TrainOptions, TrainReport, train
from .datasets import Pair, load_labelled, load_pairs, split_pairs
from .evaluate import RetrievalReport, ZeroShotReport, evaluate_retrieval, evaluate_zeroshot
from .features import FeatureCache
from .itm import ItmEpoch, ItmOptions, ItmReport, train_itm
from .metrics import recall_at

__all__ = [
    "Pair", "load_pairs", "load_labelled", "split_pairs",
    "TrainOptions", "TrainReport", "EpochStats", "train",
    "ItmOptions", "ItmReport", "ItmEpoch", "train_itm",
    "RetrievalReport", "ZeroShotReport", "evaluate_retrieval", "evaluate_zeroshot", "recall_at",
    "FeatureCache",
]
