"""Moved to :mod:`searchengine.training.contrastive`; this shim re-exports what is imported from here."""

from .training.contrastive import (EpochStats, TrainOptions, TrainReport, info_nce, one_cycle, retrieval_recall,
                                   split_for_training, train)

__all__ = ["TrainOptions", "TrainReport", "EpochStats", "train", "info_nce", "retrieval_recall", "split_for_training",
           "one_cycle"]
