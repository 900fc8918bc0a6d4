"""Near-duplicate groups over a collection's stored vectors (exact range search, union-find)."""

from __future__ import annotations

import numpy as np

from ..errors import QueryError
from ..store import Store
from .hits import Hit

__all__ = ["near_duplicates"]

_SLACK = 1e-3  # float16 storage: a little slack under the threshold


def near_duplicates(store: Store, collection_id: int, threshold: float = 0.95) -> list[list[Hit]]:
    """Groups of images whose embeddings have cosine >= ``threshold`` (linked transitively).

    Each group is sorted by path, ``score`` being the best similarity to another member;
    groups come largest first. Exact search over all stored vectors: O(n^2), meant for
    collections up to a few hundred thousand images.
    """
    import faiss

    if not 0 < threshold <= 1:
        raise QueryError("the duplicate threshold must be in (0, 1]")
    ids, vecs = store.all_vectors(collection_id)
    if not len(ids):
        return []
    flat = faiss.IndexFlatIP(vecs.shape[1])
    flat.add(vecs)
    lims, sims, found = flat.range_search(vecs, threshold - _SLACK)
    parent = list(range(len(ids)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    best = np.zeros(len(ids), np.float32)
    for i in range(len(ids)):
        for j, sim in zip(found[lims[i] : lims[i + 1]], sims[lims[i] : lims[i + 1]]):
            if j != i and sim >= threshold - _SLACK:
                parent[root(i)] = root(int(j))
                best[i] = max(best[i], min(float(sim), 1.0))
    groups: dict[int, list[int]] = {}
    for i in range(len(ids)):
        groups.setdefault(root(i), []).append(i)
    members = [i for g in groups.values() if len(g) > 1 for i in g]
    rows = store.images_by_ids(collection_id, [int(ids[i]) for i in members])
    out = [sorted((Hit.from_record(rows[int(ids[i])], float(best[i])) for i in g), key=lambda h: h.path)
           for g in groups.values() if len(g) > 1]
    return sorted(out, key=lambda g: (-len(g), g[0].path))
