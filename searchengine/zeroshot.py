"""Moved to :mod:`searchengine.stages.zeroshot`; this shim keeps the old import path."""

from .stages.zeroshot import TEMPLATES, class_embeddings, label_probabilities

__all__ = ["TEMPLATES", "class_embeddings", "label_probabilities"]
