"""Reranking: the :class:`Reranker` verb, loading a reranker by spec, and hits reordered by it.

Rerankers share one verb, ``rank(query, candidates, top_k) -> [(id, score)]``: the in-house
cross-attention ITM model (:mod:`searchengine.models.itm`, a folder from ``train --itm``) and BLIP's
ITM head (:mod:`searchengine.models.vlm`). Their score is a match probability.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol, Sequence, TypeVar, runtime_checkable

from ..config import StageModels
from ..errors import QueryError
from ..models.registry import load_stage
from .specs import rerank_spec

__all__ = ["Reranker", "load_reranker", "rerank_hits"]


@runtime_checkable
class Reranker(Protocol):
    """A second stage: scores each candidate ``(id, image or path)`` against the query text."""

    spec: str

    def rank(self, query: str, candidates: Sequence[tuple[int, Any]],
             top_k: int | None = None) -> list[tuple[int, float]]: ...


class _Hit(Protocol):
    """What reranking reads of a hit (a dataclass: :class:`searchengine.Hit`)."""

    id: int
    path: str
    score: float


HitT = TypeVar("HitT", bound=_Hit)


def load_reranker(spec: str | None = None, device: str = "auto", models: StageModels | None = None) -> Reranker:
    """An ITM folder from ``train --itm`` (``local-dir:`` optional), or a BLIP ITM model (a Hugging Face
    id or a save_pretrained folder). None ships: with no ``spec`` and none in ``models``, this raises
    :class:`~searchengine.errors.ModelLoadError` saying what to pass."""
    return load_stage("rerank", rerank_spec(spec, models), device)


def rerank_hits(reranker: Reranker, query: str, hits: list[HitT]) -> list[HitT]:
    """``hits`` reordered by the reranker; ``score`` becomes its probability, ``first_score`` keeps
    the first stage's."""
    if not query or not query.strip():
        raise QueryError("reranking compares the query's words with each hit: give a text query")
    if not hits:
        return []
    by_id = {h.id: h for h in hits}
    ranked = reranker.rank(query, [(h.id, h.path) for h in hits])
    return [replace(by_id[i], score=score, first_score=by_id[i].score) for i, score in ranked]  # type: ignore[type-var]
