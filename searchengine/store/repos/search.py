"""Lookups for search: the images a filter condition selects, and keyword search over their documents."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.sql.elements import ColumnElement

from .. import keywords
from ..database import Repository
from ..schema import images

__all__ = ["SearchRepo"]


class SearchRepo(Repository):
    """Queries over ``images`` and the keyword documents."""

    def filtered_ids(self, collection_id: int, condition: ColumnElement) -> np.ndarray:
        """Ids of the images that satisfy a condition built by :func:`~searchengine.store.filtersql.filter_condition`."""
        with self.db.connect() as conn:
            return np.fromiter(conn.execute(select(images.c.id).where(
                images.c.collection_id == collection_id, condition)).scalars(), dtype=np.int64)

    def keyword_search(self, collection_id: int, query: str, limit: int,
                       condition: ColumnElement | None = None) -> list[tuple[int, float]]:
        """(image id, score) of the images whose words match ``query``, best first (see :func:`.keywords.search`)."""
        allowed = None
        if condition is not None:
            def allowed(key: ColumnElement) -> ColumnElement:
                return key.in_(select(images.c.id).where(images.c.collection_id == collection_id, condition))
        with self.db.connect() as conn:
            return keywords.search(conn, collection_id, query, limit, allowed)
