"""SearchEngine: the facade behind the CLI, the HTTP API and Python users. It opens and closes a
collection, follows other writers' generations, loads the model on first use, and delegates:
searches to :mod:`searchengine.search`, index upkeep to :mod:`searchengine.index.maintenance`,
reranking, captions, answers and zero-shot to :mod:`searchengine.stages`."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from .config import Settings
from .errors import CollectionNotFoundError, ModelMismatchError, NotFoundError, QueryError
from .index import BaseIndex, BuildStats, VectorIndex, normalize_factory
from .index.maintenance import Indexes
from .locks import WriterLock
from .models import clip
from .models.loaded import LoadedModels, check_fingerprint
from .models.query_text import QUERY_MODEL_DIR, export_query_text
from .models.registry import canonical_spec
from .search.duplicates import near_duplicates
from .search.hits import Hit, TextHit, by_date, hydrate
from .search.searcher import ImageQuery, Searcher, SearchMode, query_words
from .stages import Reranker, StageRunner, TagReport, caption_images, classify_vectors, rerank_hits, tag_images
from .store import CollectionRecord, FileErrorRecord, ImageRecord, Store

if TYPE_CHECKING:  # pragma: no cover
    from .filters import FilterSpec
    from .models.clip import ClipEncoder

__all__ = ["SearchEngine", "Hit", "TextHit", "CollectionStatus", "ImageQuery", "SearchMode"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectionStatus:
    collection: str
    model: str
    dim: int
    fingerprint: str
    images: int
    errors: int
    products: int
    texts: int
    index_factory: str
    index_in_use: str  # the concrete factory (what ``auto`` chose)
    index_type: str
    index_vectors: int
    index_nprobe: int | None  # inverted files: lists searched per query
    index_note: str
    data_dir: str
    database: str
    schema_version: int
    #: "in memory", or for an on-disk index its lists, code size, file and delta
    index_storage: str = "in memory"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SearchEngine:
    """One collection: its store rows, its vector indexes and (loaded on first use) its model.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    """

    def __init__(self, settings: Settings, store: Store, collection: CollectionRecord,
                 encoder: "ClipEncoder | None" = None, *, writable: bool = False,
                 writer_lock: WriterLock | None = None, refresh_every: float | None = 1.0) -> None:
        self.settings = settings
        self.store = store
        self.writable = writable
        self._writer_lock = writer_lock
        if writable and writer_lock is None:
            self._writer_lock = WriterLock(settings.collection_dir, collection.name, store).acquire()
        self.refresh_every = None if writable else refresh_every
        self._models = LoadedModels(encoder)
        self._refresh_lock = threading.Lock()
        try:
            self.indexes = Indexes(store, collection, settings.collection_dir, writable=writable)
        except BaseException:
            self._release_writer()
            raise
        self.searcher = Searcher(store, self.indexes, lambda: self.encoder, settings.max_pixels,
                                 lambda: self._models.text_encoder(self.collection, settings.collection_dir,
                                                                   settings.device, settings.precision))
        self._generation = self._stamp(self.collection)
        self._checked_at = time.monotonic()

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, collection: str | None = None, *, data_dir: str | os.PathLike | None = None,
             db: str | None = None, model: str | None = None, device: str | None = None,
             index_factory: str | None = None, create: bool = False, writable: bool | None = None,
             settings: Settings | None = None) -> "SearchEngine":
        """Open a collection (``create=True`` creates it with ``model`` if it does not exist).

        ``model`` given for an existing collection must be the one that built it. ``index_factory``
        is used when the collection is created (change it later with :meth:`rebuild_index`).
        """
        settings = settings or Settings.from_env(
            collection=collection, data_dir=Path(data_dir) if data_dir is not None else None, db_url=db,
            model=model, device=device, index_factory=index_factory)
        writable = create if writable is None else writable
        store = Store(settings.database_url)
        lock = None
        try:
            if writable:
                lock = WriterLock(settings.collection_dir, settings.collection, store).acquire()
            record = store.get_collection(settings.collection)
            encoder = None
            if record is None:
                if not create:
                    raise CollectionNotFoundError(
                        f"collection {settings.collection!r} does not exist yet; "
                        "create it with `searchengine index FOLDER`")
                record, encoder = cls._create(store, settings)
            elif settings.model and canonical_spec(settings.model) != record.model_spec:
                raise ModelMismatchError(
                    f"collection {record.name!r} was built with model {record.model_spec!r}, not "
                    f"{canonical_spec(settings.model)!r}; drop --model to use the collection's model, "
                    "or index into another --collection")
            return cls(settings, store, record, encoder, writable=writable, writer_lock=lock)
        except BaseException:
            store.close()
            if lock is not None:
                lock.release()
            raise

    @staticmethod
    def _create(store: Store, settings: Settings) -> "tuple[CollectionRecord, ClipEncoder]":
        factory = normalize_factory(settings.index_factory)
        encoder = clip.load_default_encoder(canonical_spec(settings.model) if settings.model else None,
                                            settings.device, settings.precision)
        spec = canonical_spec(encoder.spec)
        VectorIndex.create(factory, encoder.dim)  # validates the factory string before anything is written
        probe = encoder.probe()
        record = store.create_collection(settings.collection, spec, encoder.dim, probe.astype("<f4").tobytes(),
                                         clip.fingerprint_id(probe), factory)
        return record, encoder

    def reopen(self) -> "SearchEngine":
        """A read engine over the collection as stored now (its indexes loaded anew) on this engine's
        store, sharing its loaded models. It does not look for new generations itself
        (``refresh_every=None``): whoever reopens decides when."""
        record = self.store.require_collection(self.collection.name)
        new = SearchEngine(self.settings, self.store, record, refresh_every=None)
        new._models = self._models
        return new

    def writer(self) -> "SearchEngine":
        """A writable engine over this collection on its own store connection (it takes the writer
        lock), sharing this engine's models: a model either of them loads is loaded once."""
        store = Store(self.settings.database_url)
        try:
            record = store.require_collection(self.collection.name)
            new = SearchEngine(self.settings, store, record, writable=True)
        except BaseException:
            store.close()
            raise
        new._models = self._models
        return new

    def __enter__(self) -> "SearchEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._release_writer()
        self.store.close()

    def _release_writer(self) -> None:
        if self._writer_lock is not None:
            self._writer_lock.release()
            self._writer_lock = None

    @property
    def collection(self) -> CollectionRecord:
        """The collection's row as last read (refreshed after each save)."""
        return self.indexes.collection

    # -- picking up another process's writes ------------------------------------------------
    @staticmethod
    def _stamp(rec: CollectionRecord) -> tuple:
        return (rec.index_seq, rec.text_index_seq, rec.index_factory, rec.index_checksum, rec.text_index_checksum)

    def refresh(self, force: bool = False) -> bool:
        """Load the collection's index again if a writer saved a new generation since it was loaded.

        A read-only engine calls this itself before each search, at most every ``refresh_every``
        seconds (``None``: never), so a long-lived reader sees what another process indexed without
        reopening. Searches already running finish on the index they started with. True when a new
        generation was loaded."""
        if self.writable:
            return False
        now = time.monotonic()
        if not force and (self.refresh_every is None or now - self._checked_at < self.refresh_every):
            return False
        with self._refresh_lock:
            if not force and now - self._checked_at < (self.refresh_every or 0):
                return False  # another thread checked meanwhile
            self._checked_at = now
            rec = self.stored_record()
            if rec is None or self._stamp(rec) == self._generation:
                return False
            index = self.indexes.reload(rec)
            self._generation = self._stamp(rec)
            log.info("loaded the new index generation of %r (%d vectors)", rec.name, index.ntotal)
            return True

    # -- the model ------------------------------------------------------------------------
    @property
    def encoder(self) -> "ClipEncoder":
        """The collection's model, loaded on first use and checked against its fingerprint."""
        return self._models.checked_encoder(self.collection, self.settings.device, self.settings.precision)

    # -- the vector indexes (kept consistent with the store by index.maintenance) ----------
    @property
    def index(self) -> BaseIndex:
        """The images' index."""
        return self.indexes.images

    @property
    def text_index(self) -> BaseIndex:
        """The captions' and titles' index (image->text and text->text search)."""
        return self.indexes.texts

    @property
    def index_path(self) -> Path:
        return self.indexes.path("images")

    @property
    def last_build(self) -> BuildStats | None:
        """The figures of the last on-disk build of the image index (:meth:`build_index`)."""
        return self.indexes.last_build

    def save_index(self, complete_to: int | None = None) -> None:
        """Save the image index (after a writer's batches) and bring the text index up to date
        (see :meth:`Indexes.save`)."""
        self.indexes.save(complete_to)

    def sync_texts(self) -> None:
        """Bring the text index in step with the stored captions and titles (and save it)."""
        self.indexes.sync_texts()

    def rebuild_index(self, index_factory: str | None = None) -> int:
        """Rebuild the vector indexes from the stored vectors (optionally with another factory)."""
        return self.indexes.rebuild(index_factory)

    def build_index(self, factory: str, *, sample: int | None = None, shard_size: int | None = None) -> int:
        """Build the vector indexes as inverted files on disk, served memory-mapped (``factory``: an
        inverted file such as ``IVF65536,PQ32``; see :mod:`searchengine.index.ondisk`). ``sample``: training
        vectors; ``shard_size``: vectors per shard before the merge. Returns the image vectors indexed."""
        return self.indexes.build_ondisk(factory, sample=sample, shard_size=shard_size)

    def export_model(self) -> dict[str, Any]:
        """Export the collection model's text tower and tokenizer (verified against torch) so that text
        queries run on ONNX Runtime without torch; returns the export's meta. The model is loaded in
        fp32 on the CPU and must match the collection's fingerprint."""
        encoder = clip.load_encoder(self.collection.model_spec, "cpu", "fp32")
        check_fingerprint(encoder, self.collection)
        return export_query_text(encoder, self.settings.collection_dir / QUERY_MODEL_DIR,
                                 self.collection.fingerprint_id)

    def set_ocr(self, ocr: bool) -> None:
        """Record whether indexing reads the text inside images (sticky per collection)."""
        self.store.set_ocr(self.collection.id, ocr)
        self.indexes.refresh_record()

    # -- queries --------------------------------------------------------------------------
    def search(self, text: str | None = None, image: ImageQuery | None = None, *, query: str | None = None,
               vector: np.ndarray | None = None, filters: FilterSpec = None, k: int = 10,
               mode: SearchMode = "vector", keyword_weight: float = 0.5, min_score: float | None = None,
               sort: Literal["score", "date"] = "score", dedup: float | bool | None = None,
               group: bool = True, rerank: bool | str | Reranker = False, rerank_top: int = 20,
               caption: bool | str = False, ask: str | None = None) -> list[Hit]:
        """Images (or products) for a text, an image, both, a composed ``query``, or a vector.

        - ``text`` and ``image`` together: the sum of their embeddings. ``query``: the composition
          grammar of :mod:`searchengine.query`, e.g. ``'"red dress" - "long sleeves" + 0.5:ref.jpg'``.
        - ``filters``: a where-expression, a mapping (``{"category": "shoes", "price": (None, 50)}``)
          or a list of those (see :mod:`searchengine.filters`). Selective filters restrict the
          vector search itself; either way you get ``k`` hits whenever ``k`` images match.
        - ``mode``: ``"vector"`` (embeddings), ``"keyword"`` (BM25 over captions, titles,
          descriptions, attributes and text in images) or ``"hybrid"`` (reciprocal rank fusion of
          both; ``keyword_weight`` in [0, 1] is the keyword list's share).
        - ``group``: images of one product come back as one hit (its best image's score).
        - ``min_score``: drop hits scoring below it. ``sort="date"``: the relevant hits (all above
          ``min_score`` when given, else the top ``k``) newest first by EXIF date, undated last.
        - ``dedup``: collapse near-duplicate images (cosine >= the threshold; ``True`` = 0.95).
        - ``rerank``: rescore the first ``rerank_top`` hits (at least ``k``) with a cross-attention
          image-text matching model against the query's words (``True``: the default reranker, see
          :func:`searchengine.stages.load_reranker`; or a model spec, or a :class:`Reranker`). ``score``
          becomes the match probability, which ``min_score`` then applies to.
        - ``caption`` (``True`` or a model spec) and ``ask`` (a question): a generated caption and an
          answer for each returned hit, cached per image content and model.
        """
        self.refresh()
        if rerank is not False and rerank is not None:
            return self._reranked(text, image, query, vector, filters, k, mode, keyword_weight, min_score, sort,
                                  dedup, group, rerank, rerank_top, caption, ask)
        hits = self.searcher.search(text, image, query, vector, filters, k, mode, keyword_weight, min_score, sort,
                                    dedup, group)
        return self._annotate(hits, caption, ask) if caption or ask is not None else hits

    def _reranked(self, text, image, query, vector, filters, k, mode, keyword_weight, min_score, sort, dedup, group,
                  rerank, rerank_top, caption, ask) -> list[Hit]:
        if rerank_top < 1:
            raise QueryError("rerank_top must be at least 1")
        words = query_words(text, query)
        if not words.strip():
            raise QueryError("reranking compares the query's words with each hit: give a text query")
        reranker = rerank if not isinstance(rerank, (bool, str)) else self.reranker(
            rerank if isinstance(rerank, str) else None)
        first = self.searcher.search(text, image, query, vector, filters, max(k, rerank_top), mode, keyword_weight,
                                     None, "score", dedup, group)
        hits = rerank_hits(reranker, words, first)
        if min_score is not None:
            hits = [h for h in hits if h.score >= min_score]
        hits = by_date(hits) if sort == "date" else hits
        return self._annotate(hits[:k], caption, ask)

    def search_text(self, text: str, k: int = 10, **options: Any) -> list[Hit]:
        """Images ranked by similarity to a text."""
        return self.search(text=text, k=k, **options)

    def search_image(self, image: ImageQuery, k: int = 10, **options: Any) -> list[Hit]:
        """Images ranked by similarity to an image (a path, bytes, a file object or a PIL image)."""
        return self.search(image=image, k=k, **options)

    def search_vector(self, vector: np.ndarray, k: int = 10, **options: Any) -> list[Hit]:
        """Images ranked by inner product with an L2-normalised vector of the collection's model."""
        return self.search(vector=vector, k=k, **options)

    def similar(self, image_id: int, k: int = 10, **options: Any) -> list[Hit]:
        """Images most like the indexed image ``image_id`` (itself left out); ``options`` as :meth:`search`."""
        hits = self.search(vector=self.image_vector(image_id), k=k + 1, **options)
        return [h for h in hits if h.id != int(image_id)][:k]

    def search_texts(self, text: str | None = None, image: ImageQuery | None = None, *, k: int = 10,
                     field: str | None = None, vector: np.ndarray | None = None) -> list[TextHit]:
        """Captions and product titles for an image (image->text), a text (text->text) or a vector, best first."""
        self.refresh()
        return self.searcher.search_texts(text, image, k, field, vector)

    def embed_query(self, query: str) -> np.ndarray:
        """The vector of a composed query (see :mod:`searchengine.query`), L2-normalised."""
        return self.searcher.embed_query(query)

    def image(self, image_id: int) -> Hit:
        """One image with everything stored about it (score 1.0); NotFoundError when it is gone."""
        hits = hydrate(self.store, self.collection.id, [(int(image_id), 1.0)], group=False)
        if not hits:
            raise NotFoundError(f"no image with id {image_id} in collection {self.collection.name!r}")
        return hits[0]

    def image_vector(self, image_id: int) -> np.ndarray:
        """The stored vector of an indexed image."""
        found, vecs = self.store.live_vectors(self.collection.id, [int(image_id)])
        if not len(found):
            raise NotFoundError(f"no image with id {image_id} in collection {self.collection.name!r}")
        return vecs[0]

    def near_duplicates(self, threshold: float = 0.95) -> list[list[Hit]]:
        """Groups of images whose embeddings have cosine >= ``threshold`` (see
        :func:`searchengine.search.duplicates.near_duplicates`)."""
        return near_duplicates(self.store, self.collection.id, threshold)

    # -- looking closer: rerankers, captions, answers, zero-shot ----------------------------
    @property
    def stages(self) -> StageRunner:
        """The optional stages, with this engine's configured stage models (each loaded once)."""
        return StageRunner(self.store, self._models, self.settings.stage_models, self.settings.device)

    def reranker(self, spec: str | None = None) -> Reranker:
        """A reranker (loaded once per engine): see :func:`searchengine.stages.load_reranker`."""
        return self.stages.reranker(spec)

    def captioner(self, spec: str | None = None) -> Any:
        return self.stages.captioner(spec)

    def answerer(self, spec: str | None = None) -> Any:
        return self.stages.answerer(spec)

    def caption(self, images: Sequence[ImageQuery], model: str | None = None) -> list[str]:
        """A caption for each image (a path, bytes or PIL image), cached per content and model."""
        return self.stages.caption(images, model)

    def ask(self, images: Sequence[ImageQuery], question: str, model: str | None = None) -> list[str]:
        """An answer to ``question`` for each image, cached per (content, question, model)."""
        return self.stages.ask(images, question, model)

    def _annotate(self, hits: list[Hit], caption: bool | str, ask: str | None) -> list[Hit]:
        return self.stages.annotate(self.collection.id, hits, caption, ask)

    def caption_collection(self, model: str | None = None, progress: Any = None) -> int:
        """Caption every image without a searchable generated caption (``index --caption``): the
        captions join keyword search and image->text search. Returns how many images were done."""
        done = caption_images(self.store, self.collection.id, self.captioner(model), self.encoder, progress)
        self.sync_texts()
        return done

    def classify(self, images: Sequence[ImageQuery], labels: Sequence[str],
                 templates: Sequence[str] | None = None) -> list[list[tuple[str, float]]]:
        """Zero-shot: per image, ``(label, probability)`` best first. The probabilities sum to 1 over
        the given labels: they say which label fits best relative to the others, not how well."""
        vecs = (np.stack([self.searcher.image_vector(im) for im in images]) if images
                else np.zeros((0, self.collection.dim)))
        probs = classify_vectors(self.encoder, vecs, list(labels), templates)
        return [sorted(zip(labels, map(float, p)), key=lambda x: -x[1]) for p in probs]

    def tag(self, labels: Sequence[str], *, threshold: float = 0.3, top: int = 3,
            templates: Sequence[str] | None = None) -> TagReport:
        """Zero-shot tags for the whole collection from its stored vectors (replacing earlier tags);
        they become a filter field (``tag = cat``) and keyword text."""
        return tag_images(self.store, self.collection.id, self.encoder, list(labels), threshold=threshold, top=top,
                          templates=templates)

    # -- status ---------------------------------------------------------------------------
    def status(self) -> CollectionStatus:
        rec, index = self.collection, self.index
        return CollectionStatus(
            collection=rec.name, model=rec.model_spec, dim=rec.dim, fingerprint=rec.fingerprint_id,
            images=self.store.count_images(rec.id), errors=self.store.count_errors(rec.id),
            products=self.store.count_products(rec.id), texts=self.store.count_texts(rec.id),
            index_factory=rec.index_factory, index_in_use=index.chosen, index_type=index.inner_type,
            index_vectors=index.ntotal, index_nprobe=index.nprobe,
            index_note=index.note, data_dir=str(self.settings.data_dir),
            database=self.store.db.url.render_as_string(hide_password=True),
            schema_version=self.store.schema_version(), index_storage=index.storage)

    def errors(self) -> list[FileErrorRecord]:
        """Files that could not be indexed, with the reason."""
        return self.store.file_errors(self.collection.id)

    # -- what the store holds (read-only views for the CLI, the server and evaluation) -------
    def stored_record(self) -> CollectionRecord | None:
        """The collection's row as stored now (another process may have written since it was read)."""
        return self.store.get_collection(self.collection.name)

    def records(self, image_ids: Sequence[int]) -> dict[int, ImageRecord]:
        """The stored rows of those of ``image_ids`` that are live, by id."""
        return self.store.images_by_ids(self.collection.id, [int(i) for i in image_ids])

    def images_under(self, roots: Sequence[str]) -> list[ImageRecord]:
        """The rows of the images at or below ``roots`` (absolute paths)."""
        return self.store.images_under(self.collection.id, list(roots))

    def image_vectors(self, image_ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``image_ids`` (all live), in their order."""
        return self.store.vectors_for(self.collection.id, [int(i) for i in image_ids])

    def roots(self) -> list[str]:
        """The folders indexed into the collection."""
        return self.store.roots(self.collection.id)

    def facets(self) -> dict[str, list[tuple[str, int]]]:
        """Attribute names with their most frequent values and counts (for filter menus)."""
        return self.store.facets(self.collection.id)

    def count_uncaptioned(self) -> int:
        """Images without a searchable generated caption (what :meth:`caption_collection` would do)."""
        return len(self.store.images_without_generated(self.collection.id))
