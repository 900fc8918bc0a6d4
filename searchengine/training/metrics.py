"""Retrieval metrics shared by training and evaluation: recall@k both ways, and what counts as the same
answer (an image's captions are one answer; captions compare by their normalised text)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["recall_at", "distinct_owners", "retrieval_recall", "first_captions", "caption_key"]


def recall_at(ranked: Sequence[Sequence[int]], correct: Sequence[set[int]], ks: Sequence[int]) -> dict[int, float]:
    """Share of queries with at least one correct item among their first k results, per k."""
    if not ranked:
        return {k: 0.0 for k in ks}
    return {k: float(np.mean([bool(set(r[:k]) & c) for r, c in zip(ranked, correct)])) for k in ks}


def distinct_owners(ranked_captions: Sequence[int], owner: Sequence[int], k: int) -> list[int]:
    """The first ``k`` distinct images owning the ranked captions (an image's captions are one
    answer); faiss's -1 padding is skipped."""
    seen: list[int] = []
    for c in ranked_captions:
        if c >= 0 and int(owner[c]) not in seen:
            seen.append(int(owner[c]))
            if len(seen) == k:
                break
    return seen


def retrieval_recall(image: np.ndarray, text: np.ndarray, owner: np.ndarray, first: np.ndarray,
                     ks: Sequence[int]) -> tuple[dict[int, float], dict[int, float]]:
    """Recall@k both ways for normalised ``image`` (n, d) and ``text`` (m, d) vectors.

    ``owner[j]`` is the image of caption j; ``first[i]`` the caption that queries for image i.
    """
    sims = image @ text.T  # (n, m)
    own = [{i} for i in range(len(image))]
    t2i_rank = np.argsort(-sims[:, first].T, axis=1)  # each image's first caption -> images
    i2t_rank = [distinct_owners(row, owner, max(ks)) for row in np.argsort(-sims, axis=1)]
    return recall_at(t2i_rank.tolist(), own, ks), recall_at(i2t_rank, own, ks)


def first_captions(owner: np.ndarray, images: int) -> list[int]:
    """For each of ``images`` images, its first caption (``owner[j]`` is the image of caption j)."""
    return [int(np.flatnonzero(owner == i)[0]) for i in range(images)]


def caption_key(caption: str) -> str:
    """A caption's text as compared for right answers: lower case, single spaces, no final full stop."""
    return " ".join(caption.lower().split()).rstrip(".")
