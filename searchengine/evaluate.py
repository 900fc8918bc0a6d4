"""Moved to :mod:`searchengine.training.evaluate`; this shim re-exports what is imported from here."""

from .training.evaluate import (RetrievalReport, ZeroShotReport, distinct_owners, evaluate_retrieval,
                                evaluate_zeroshot, recall_at)

__all__ = ["RetrievalReport", "ZeroShotReport", "evaluate_retrieval", "evaluate_zeroshot", "recall_at",
           "distinct_owners"]
