"""Search: hits and their hydration, ranking (filters, exact re-rank, fusion), the searcher and
near-duplicate groups."""

from __future__ import annotations

from .duplicates import near_duplicates
from .hits import Hit, TextHit
from .ranking import RRF_K, fuse
from .searcher import ImageQuery, Searcher, SearchMode

__all__ = ["Hit", "TextHit", "Searcher", "ImageQuery", "SearchMode", "fuse", "RRF_K", "near_duplicates"]
