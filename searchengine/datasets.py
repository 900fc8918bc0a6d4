"""Moved to :mod:`searchengine.training.datasets`; this shim re-exports what is imported from here."""

from .training.datasets import Pair, load_labelled, load_pairs, split_pairs

__all__ = ["Pair", "load_pairs", "load_labelled", "split_pairs"]
