"""The first stage of every search: turn a query (text, image, composed query or vector) into a
vector, rank by the index and/or keywords under filters, and join the hits through the store."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Literal, Union

import numpy as np

from ..errors import ImageDecodeError, QueryError
from ..filters import FilterSpec, as_filter
from ..imaging import check_image, safe_open, to_rgb
from ..index.maintenance import Indexes
from ..query import parse_query
from ..store import CollectionRecord, Store, filter_condition
from .hits import Hit, TextHit, by_date, dedup, hydrate
from .ranking import fuse, normalized, search_index, vector_ranking

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from ..models.clip import ClipEncoder

__all__ = ["Searcher", "ImageQuery", "SearchMode", "SortOrder", "query_words"]

ImageQuery = Union[str, os.PathLike, bytes, BinaryIO, "Image.Image"]
SearchMode = Literal["vector", "keyword", "hybrid"]
SortOrder = Literal["score", "date"]
_MODES = ("vector", "keyword", "hybrid")


def query_words(text: str | None, query: str | None) -> str:
    """The words of a search (its text, or a composed query's positive text parts)."""
    if query is not None:
        return " ".join(p.value for p in parse_query(query) if p.kind == "text" and p.weight > 0)
    return text or ""


class Searcher:
    """Runs one collection's searches over its store rows and indexes; the model is asked for only
    when a query needs a vector."""

    def __init__(self, store: Store, indexes: Indexes, encoder: Callable[[], "ClipEncoder"], max_pixels: int,
                 text_encoder: Callable[[], Any] | None = None) -> None:
        self.store = store
        self.indexes = indexes
        self._encoder = encoder
        #: what encodes text queries (a torch-free exported text tower when there is one)
        self._text_encoder = text_encoder or encoder
        self.max_pixels = max_pixels

    @property
    def collection(self) -> CollectionRecord:
        return self.indexes.collection

    # -- query vectors ----------------------------------------------------------------------
    def text_vector(self, text: str) -> np.ndarray:
        if not text or not text.strip():
            raise QueryError("empty text query")
        return self._text_encoder().encode_texts([text.strip()])[0]

    def image_vector(self, image: ImageQuery) -> np.ndarray:
        from PIL import Image

        self.check_image(image)
        encoder = self._encoder()
        if isinstance(image, Image.Image):
            pil = to_rgb(image)  # as the indexer sees pixels: alpha over white, any mode
        else:
            try:
                pil = safe_open(image, max_pixels=self.max_pixels, draft_size=encoder.image_size)
            except ImageDecodeError as exc:
                raise QueryError(f"cannot read the query image: {exc}") from exc
        return encoder.encode_images([pil])[0]

    def check_image(self, image: ImageQuery) -> None:
        """Read a query image's header before any model loads: a file that is no image costs no load."""
        from PIL import Image

        if not isinstance(image, Image.Image):
            try:
                check_image(image, max_pixels=self.max_pixels)
            except ImageDecodeError as exc:
                raise QueryError(f"cannot read the query image: {exc}") from exc

    def embed_query(self, query: str) -> np.ndarray:
        """The vector of a composed query (see :mod:`searchengine.query`), L2-normalised."""
        total = np.zeros(self.collection.dim, dtype=np.float32)
        for part in parse_query(query):
            vec = self.text_vector(part.value) if part.kind == "text" else self.image_vector(part.value)
            total += part.weight * vec
        return normalized(total)

    def plan(self, text, image, query, vector, mode: str) -> tuple[str, np.ndarray | None]:
        """(the words for keyword search, the query vector) of a search's inputs."""
        given = [x is not None for x in (text, image, query, vector)]
        if not any(given):
            raise QueryError("nothing to search for: give a text, an image, a query or a vector")
        if query is not None and any(given[:2] + given[3:]):
            raise QueryError("give either a composed query or text/image/vector, not both")
        if text is not None and not text.strip():
            raise QueryError("empty text query")
        words = query_words(text, query)
        if mode != "vector" and not words.strip():
            raise QueryError(f"{mode} search needs words: give a text query")
        if mode == "keyword":
            return words, None
        if self.indexes.images.ntotal == 0:  # nothing to rank: no model needs to load
            if image is not None:
                self.check_image(image)  # a bad query image is still said (image_vector checks it otherwise)
            return words, None
        if query is not None:
            return words, self.embed_query(query)
        parts = []
        if vector is not None:
            vec = np.asarray(vector, dtype=np.float32).reshape(-1)
            if vec.shape[0] != self.collection.dim:
                raise QueryError(f"the query vector has {vec.shape[0]} dimensions, the collection {self.collection.dim}")
            parts.append(vec)
        if text is not None:
            parts.append(self.text_vector(text))
        if image is not None:
            parts.append(self.image_vector(image))
        return words, parts[0] if len(parts) == 1 else normalized(np.sum(parts, axis=0))

    # -- searches ---------------------------------------------------------------------------
    def search(self, text: str | None, image: ImageQuery | None, query: str | None, vector: np.ndarray | None,
               filters: FilterSpec, k: int, mode: SearchMode, keyword_weight: float, min_score: float | None,
               sort: SortOrder, dedup_threshold: float | bool | None, group: bool) -> list[Hit]:
        """Images (or products) for a search's inputs; see :meth:`SearchEngine.search`."""
        threshold = _check(k, mode, keyword_weight, sort, dedup_threshold)
        words, qvec = self.plan(text, image, query, vector, mode)
        cid = self.collection.id
        node = as_filter(filters)
        condition = None if node is None else filter_condition(node)
        allowed = None if condition is None else self.store.filtered_ids(cid, condition)
        everything = sort == "date" and min_score is not None
        n = max(16, 4 * k) if mode == "vector" else max(100, 4 * k)  # fusion needs deep lists from both sides
        while True:
            index = self.indexes.images
            vec_ranked = vector_ranking(self.store, cid, index, qvec, n, allowed) if qvec is not None else []
            kw_ranked = self.store.keyword_search(cid, words, n, condition) if mode != "vector" else []
            exhausted = len(vec_ranked) < n and len(kw_ranked) < n
            ranked = {"vector": vec_ranked, "keyword": kw_ranked}.get(mode) or fuse(
                vec_ranked, kw_ranked, keyword_weight)
            hits = hydrate(self.store, cid, ranked, group)
            if min_score is not None:
                below = any(h.score < min_score for h in hits)
                hits = [h for h in hits if h.score >= min_score]
                exhausted = exhausted or below
            if threshold is not None:
                hits = dedup(self.store, cid, hits, threshold)
            if exhausted or (len(hits) >= k and not everything):
                break
            n *= 4
        return (by_date(hits if everything else hits[:k]) if sort == "date" else hits)[:k]

    def search_texts(self, text: str | None, image: ImageQuery | None, k: int, field: str | None,
                     vector: np.ndarray | None) -> list[TextHit]:
        """Captions and product titles for an image, a text or a vector, best first."""
        if k < 1:
            raise QueryError("k must be at least 1")
        if sum(x is not None for x in (text, image, vector)) != 1:
            raise QueryError("give one of a text, an image or a vector")
        if text is not None and not text.strip():
            raise QueryError("empty text query")
        if self.indexes.texts.ntotal == 0:  # no captions or titles: no model needs to load
            if image is not None:
                self.check_image(image)  # a bad query image is still said (image_vector checks it otherwise)
            return []
        qvec = (self.text_vector(text) if text is not None else self.image_vector(image) if image is not None
                else normalized(np.asarray(vector, np.float32)))
        cid = self.collection.id
        n = k if field is None else 4 * k
        while True:
            scores, ids = search_index(self.store, cid, self.indexes.texts, qvec.reshape(1, -1), n + 8, kind="texts")
            pairs = [(int(i), float(sc)) for i, sc in zip(ids[0], scores[0]) if i >= 0]
            rows = self.store.texts_by_ids(cid, [i for i, _ in pairs])
            found = [(rows[i], sc) for i, sc in pairs if i in rows and (field is None or rows[i].field == field)]
            if len(found) >= k or len(pairs) < n + 8:
                break
            n *= 4
        found = found[:k]
        images = self.store.images_by_ids(cid, [r.image_id for r, _ in found if r.image_id])
        products = self.store.products_by_ids(cid, [r.product_id for r, _ in found if r.product_id])
        return [TextHit(id=r.id, score=sc, text=r.text, field=r.field, image_id=r.image_id,
                        path=images[r.image_id].path if r.image_id in images else None,
                        product_id=products[r.product_id].key if r.product_id in products else None)
                for r, sc in found]


def _check(k: int, mode: str, keyword_weight: float, sort: str, dedup_threshold: float | bool | None) -> float | None:
    """Validate a search's options; returns the dedup threshold (None: no dedup)."""
    if k < 1:
        raise QueryError("k must be at least 1")
    if mode not in _MODES:
        raise QueryError(f"unknown search mode {mode!r}; use vector, keyword or hybrid")
    if not 0.0 <= keyword_weight <= 1.0:
        raise QueryError("keyword_weight must be between 0 and 1")
    if sort not in ("score", "date"):
        raise QueryError(f"unknown sort order {sort!r}; use score or date")
    threshold = 0.95 if dedup_threshold is True else (float(dedup_threshold) if dedup_threshold else None)
    if threshold is not None and not 0 < threshold <= 1:
        raise QueryError("the dedup threshold must be in (0, 1]")
    return threshold
