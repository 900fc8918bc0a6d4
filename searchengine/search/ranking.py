"""Ranking: vector search through the index (filtered, with exact re-ranking of lossy codes),
and reciprocal rank fusion of the vector and keyword lists."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import QueryError
from ..index import RERANK_FACTOR, BaseIndex
from ..store import Store, VectorKind

__all__ = ["RRF_K", "fuse", "normalized", "vector_ranking", "search_index", "exact_top"]

#: Reciprocal rank fusion's constant (Cormack et al. 2009): rank r contributes weight / (RRF_K + r).
RRF_K = 60


def fuse(vector: Sequence[tuple[int, float]], keyword: Sequence[tuple[int, float]],
         keyword_weight: float = 0.5) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each list adds ``weight / (RRF_K + rank)`` (rank from 1) to an id.

    Ties go to the better vector rank, then the smaller id.
    """
    scores: dict[int, float] = {}
    for ranked, weight in ((vector, 1.0 - keyword_weight), (keyword, keyword_weight)):
        for rank, (i, _) in enumerate(ranked, start=1):
            scores[i] = scores.get(i, 0.0) + weight / (RRF_K + rank)
    vrank = {i: r for r, (i, _) in enumerate(vector)}
    return sorted(scores.items(), key=lambda p: (-p[1], vrank.get(p[0], len(vrank)), p[0]))


def normalized(vec: np.ndarray) -> np.ndarray:
    """``vec`` scaled to unit length (a composed query whose parts cancel out is refused)."""
    norm = float(np.linalg.norm(vec))
    if norm < 1e-6:
        raise QueryError("the query's parts cancel out; change their weights")
    return (vec / norm).astype(np.float32)


def vector_ranking(store: Store, collection_id: int, index: BaseIndex, qvec: np.ndarray, n: int,
                   allowed: np.ndarray | None) -> list[tuple[int, float]]:
    """The top ``n`` (id, score) by the vector index, among ``allowed`` ids when given.

    A selective filter (at most a quarter of the collection) searches through a faiss id
    selector; a broad one oversamples and filters. Approximate indexes can come back short
    under a selector (HNSW's graph walk); then the allowed vectors are scored exactly. A lossy
    index's candidates are re-ranked exactly (:func:`search_index`).
    """
    total = index.ntotal
    q = np.asarray(qvec, dtype=np.float32).reshape(1, -1)
    if allowed is None:
        scores, ids = search_index(store, collection_id, index, q, n + max(8, n // 4))  # rows removed meanwhile
        return [(int(i), float(sc)) for i, sc in zip(ids[0], scores[0]) if i >= 0]
    want = min(n, len(allowed))
    if want == 0:
        return []
    found: list[tuple[int, float]] = []
    if len(allowed) * 4 > total:
        scores, ids = search_index(store, collection_id, index, q, int(n * total / len(allowed) * 1.5) + 16)
        keep = np.isin(ids[0], allowed)
        found = [(int(i), float(sc)) for i, sc in zip(ids[0][keep], scores[0][keep])]
    if len(found) < want:
        scores, ids = search_index(store, collection_id, index, q, want, allowed=allowed)
        found = [(int(i), float(sc)) for i, sc in zip(ids[0], scores[0]) if i >= 0]
    if len(found) < want:
        live = store.live_ids(collection_id)
        ids, sims = exact_top(store, collection_id, np.intersect1d(allowed, live).tolist(), q, n)
        found = [(int(i), float(sc)) for i, sc in zip(ids, sims)]
    return found[:n]


def search_index(store: Store, collection_id: int, index: BaseIndex, q: np.ndarray, k: int,
                 allowed: np.ndarray | None = None, kind: VectorKind = "images") -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` of one query row; a lossy index's ``RERANK_FACTOR * k`` candidates are
    re-scored exactly with the stored vectors (rows removed meanwhile drop out) and the top ``k`` kept."""
    if not index.lossy:
        return index.search(q, k, allowed=allowed)
    _, cand = index.search(q, k * RERANK_FACTOR, allowed=allowed)
    ids, sims = exact_top(store, collection_id, cand[0][cand[0] >= 0].tolist(), q, k, kind)
    return sims.astype(np.float32).reshape(1, -1), ids.reshape(1, -1)


def exact_top(store: Store, collection_id: int, ids: Sequence[int], q: np.ndarray, k: int,
              kind: VectorKind = "images") -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of the best ``k`` of ``ids`` by exact inner product with their stored vectors,
    best first; rows a writer removed meanwhile drop out."""
    found, vecs = store.live_vectors(collection_id, ids, kind)
    sims = vecs @ q[0]
    top = np.argsort(-sims, kind="stable")[:k]
    return found[top], sims[top]
