"""The one ``nprobe`` calibrator of inverted files, used by the in-memory ``auto`` build and by the
on-disk build: ``nprobe`` is doubled until recall@10 against exact search, for stored vectors used as
queries (each one's own id left out), reaches a target.

For a lossy index (PQ codes) recall is of what the engine returns: the true top 10 among the
``RERANK_FACTOR * 10`` candidates it re-ranks exactly. The exact answers come from
:func:`exact_top` (all vectors in hand) or :class:`ExactTop` (vectors streamed once, in chunks).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import RERANK_FACTOR, is_lossy
from .factory import AUTO_TARGET_RECALL

__all__ = ["CALIBRATION_QUERIES", "ExactTop", "calibration_rows", "exact_top", "recall_at_k", "tune_nprobe"]

#: how many stored vectors serve as calibration queries
CALIBRATION_QUERIES = 200


def calibration_rows(n: int, seed: int = 0, count: int = CALIBRATION_QUERIES) -> np.ndarray:
    """``count`` distinct rows of ``n`` (all of them when fewer), drawn at random with ``seed``."""
    return np.random.default_rng(seed).choice(n, size=min(count, n), replace=False)


class ExactTop:
    """The exact top ``k`` (by inner product) of a few queries over vectors streamed in chunks."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.q, self.k = queries, k
        self.scores = np.full((len(queries), k), -np.inf, np.float32)
        self.ids = np.full((len(queries), k), -1, np.int64)

    def update(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if not len(ids) or not len(self.q):
            return
        scores = np.concatenate([self.scores, self.q @ vecs.T], axis=1)
        found = np.concatenate([self.ids, np.broadcast_to(ids, (len(self.q), len(ids)))], axis=1)
        top = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k] if scores.shape[1] > self.k else \
            np.argsort(-scores, axis=1)
        self.scores, self.ids = np.take_along_axis(scores, top, 1), np.take_along_axis(found, top, 1)

    def ranked(self) -> np.ndarray:
        """The ids per query, best first (-1 where fewer vectors were seen than ``k``)."""
        return np.take_along_axis(self.ids, np.argsort(-self.scores, axis=1), 1)


def exact_top(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """The ids of the exact top ``k`` of ``vectors`` (float32, rows keyed by ``ids``) per query, best
    first (faiss's exact search, in bounded blocks)."""
    import faiss

    _, rows = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    return np.asarray(ids)[rows]


def recall_at_k(index: Any, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Recall@k of a faiss ``index`` for stored vectors used as queries (each one's own id left out of
    the truth and the answer); ``truth``: the exact ids per query, best first. For a lossy index, of
    the engine's exact re-rank: the true top k among ``RERANK_FACTOR * k`` candidates."""
    if not len(queries):
        return 1.0
    _, found = index.search(queries, k * (RERANK_FACTOR if is_lossy(index) else 1) + 1)
    recalls = []
    for qid, f, t in zip(query_ids, found, truth):
        want = set([int(i) for i in t if i != qid and i >= 0][:k])
        recalls.append(len((set(f.tolist()) - {int(qid)}) & want) / max(len(want), 1))
    return float(np.mean(recalls))


def tune_nprobe(index: Any, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray, *,
                target: float = AUTO_TARGET_RECALL, min_gain: float | None = None) -> tuple[int, float]:
    """Set the ``nprobe`` of the inverted file in ``index``: doubled from nlist/64 (at least 8) until
    :func:`recall_at_k` reaches ``target`` or every list is searched; returns (nprobe, recall).

    It starts at nlist/64: queries from the other modality (texts searching images, images searching
    texts) sit farther from the stored vectors than the calibration queries, so the margin is kept
    even when the stored vectors alone would accept fewer lists. ``min_gain``: also stop, at the
    previous ``nprobe``, when a doubling gains less recall than this (codes whose quantisation caps
    recall: more lists would only cost time)."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    nprobe = min(ivf.nlist, max(8, ivf.nlist // 64))
    best = (nprobe, -1.0)
    while True:
        ivf.nprobe = nprobe
        recall = recall_at_k(index, queries, query_ids, truth)
        if min_gain is not None and recall < best[1] + min_gain:
            ivf.nprobe = best[0]
            return best
        best = (nprobe, recall)
        if recall >= target or nprobe >= ivf.nlist:
            return best
        nprobe = min(nprobe * 2, ivf.nlist)
