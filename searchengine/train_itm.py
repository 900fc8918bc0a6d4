"""Moved to :mod:`searchengine.training.itm`; this shim re-exports what is imported from here."""

from .training.features import FeatureCache
from .training.itm import (ItmEpoch, ItmOptions, ItmReport, _fit, _hard_negatives, _pick, _rerank_recall, _Split,
                           _split_data, train_itm)

ArrayCache = FeatureCache.files  # the ITM trainer's cache: one .npy per key under a folder

__all__ = ["ItmOptions", "ItmReport", "ItmEpoch", "train_itm", "ArrayCache", "_fit", "_hard_negatives", "_pick",
           "_rerank_recall", "_Split", "_split_data"]
