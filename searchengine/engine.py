"""SearchEngine: the query API behind the CLI, the HTTP API and Python users."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Sequence, Union

import numpy as np

from .config import Settings
from .errors import (
    CollectionNotFoundError,
    IndexChecksumError,
    ModelMismatchError,
    NotFoundError,
    QueryError,
    VectorIndexError,
)
from .locks import WriterLock
from .ondisk import (
    ONDISK_PREFIX,
    BuildOptions,
    BuildStats,
    OnDiskIndex,
    TooFewVectorsError,
    base_factory,
    build_from_store,
    is_ondisk,
    remove_unused_files,
)
from .store import CollectionRecord, FileErrorRecord, ImageRecord, ProductRecord, Store, VectorKind
from .vectors import FALLBACK_NOTE, RERANK_FACTOR, VectorIndex, needs_rechoice, normalize_factory

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from .filters import FilterSpec
    from .models.clip import ClipEncoder
    from .stages import Reranker, TagReport

__all__ = ["SearchEngine", "Hit", "TextHit", "CollectionStatus", "ImageQuery", "SearchMode"]

log = logging.getLogger(__name__)

ImageQuery = Union[str, os.PathLike, bytes, BinaryIO, "Image.Image"]
INDEX_FILE = "index.faiss"
TEXT_INDEX_FILE = "texts.faiss"
SearchMode = Literal["vector", "keyword", "hybrid"]
#: Reciprocal rank fusion's constant (Cormack et al. 2009): rank r contributes weight / (RRF_K + r).
RRF_K = 60


@dataclass(frozen=True)
class Hit:
    """One search result, joined through the store: an image, or a product with its best image."""

    id: int  # the image's id
    path: str  # the matched image
    score: float
    width: int
    height: int
    size: int
    mtime: float
    caption: str | None = None
    taken_at: str | None = None  # EXIF DateTimeOriginal, ISO 8601
    text: str | None = None  # the text read inside the image (OCR)
    #: the image's own attributes, and its product's (filters and keyword search see both)
    attributes: dict[str, list[str]] = field(default_factory=dict)
    product_id: str | None = None  # the catalog's product id
    title: str | None = None
    description: str | None = None
    images: list[str] = field(default_factory=list)  # a product's images, in catalog order
    #: after reranking, ``score`` is the reranker's match probability and this the first stage's score
    first_score: float | None = None
    generated_caption: str | None = None  # search(..., caption=True)
    answer: str | None = None  # search(..., ask="question")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, rec: ImageRecord, score: float, attributes: dict | None = None,
                    product: ProductRecord | None = None) -> "Hit":
        attrs = {key: list(values) for key, values in (attributes or {}).items()}  # never share the lists
        extra: dict[str, Any] = {}
        if product is not None:
            for key, values in product.attributes.items():
                attrs.setdefault(key, []).extend(v for v in values if v not in attrs.get(key, []))
            extra = dict(product_id=product.key, title=product.title, description=product.description,
                         images=list(product.images))
        return cls(id=rec.id, path=rec.path, score=score, width=rec.width, height=rec.height, size=rec.size,
                   mtime=rec.mtime, caption=rec.caption or (product.caption if product else None),
                   taken_at=rec.taken_at, text=rec.ocr_text or None, attributes=attrs, **extra)


@dataclass(frozen=True)
class TextHit:
    """A caption or product title found by image->text or text->text search."""

    id: int
    score: float
    text: str
    field: str  # "caption" or "title"
    image_id: int | None = None
    path: str | None = None  # the image a caption belongs to
    product_id: str | None = None  # the product a title or caption belongs to

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _by_date(hits: list[Hit]) -> list[Hit]:
    """Newest first by EXIF date, undated last (in their order)."""
    return sorted((h for h in hits if h.taken_at), key=lambda h: h.taken_at or "", reverse=True) + [
        h for h in hits if not h.taken_at]


def _normalized(vec: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vec))
    if norm < 1e-6:
        raise QueryError("the query's parts cancel out; change their weights")
    return (vec / norm).astype(np.float32)


def canonical_spec(spec: str) -> str:
    """A spec as recorded in a collection: local paths made absolute so any cwd can use it."""
    spec = spec.strip()
    if spec.startswith("local-dir:"):
        return "local-dir:" + str(Path(spec[len("local-dir:"):]).expanduser().resolve())
    if spec.startswith("hf-hub:") or spec == "lite":
        return spec
    arch, sep, rest = spec.partition(":")
    if sep and (rest.startswith(("/", ".", "~")) or os.sep in rest) and Path(rest).expanduser().exists():
        return f"{arch}:{Path(rest).expanduser().resolve()}"
    return spec


class SearchEngine:
    """One collection: its store rows, its vector index and (loaded on first use) its model.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    """

    def __init__(self, settings: Settings, store: Store, collection: CollectionRecord,
                 encoder: "ClipEncoder | None" = None, *, writable: bool = False,
                 writer_lock: WriterLock | None = None, refresh_every: float | None = 1.0) -> None:
        self.settings = settings
        self.store = store
        self.collection = collection
        self.writable = writable
        self._writer_lock = writer_lock
        if writable and writer_lock is None:
            self._writer_lock = WriterLock(settings.collection_dir, collection.name, store).acquire()
        self.refresh_every = None if writable else refresh_every
        self._encoder = encoder
        self._encoder_checked = False
        self._text_index: VectorIndex | None = None
        self._stages: dict[tuple[str, str], Any] = {}  # loaded rerankers, captioners, answerers
        self._load_lock = threading.RLock()  # threads (the HTTP server) load each model once
        self._refresh_lock = threading.Lock()
        self._ondisk_options = BuildOptions()
        #: the figures of the last on-disk build of the image index (``build_index``)
        self.last_build: BuildStats | None = None
        try:
            self.index = self._load_index()
        except BaseException:
            self._release_writer()
            raise
        self._generation = self._stamp(collection)
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
        from .models.clip import fingerprint_id, load_default_encoder

        factory = normalize_factory(settings.index_factory)
        encoder = load_default_encoder(canonical_spec(settings.model) if settings.model else None, settings.device,
                                       settings.precision)
        spec = canonical_spec(encoder.spec)
        VectorIndex.create(factory, encoder.dim)  # validates the factory string before anything is written
        probe = encoder.probe()
        record = store.create_collection(settings.collection, spec, encoder.dim, probe.astype("<f4").tobytes(),
                                         fingerprint_id(probe), factory)
        return record, encoder

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
            rec = self.store.get_collection(self.collection.name)
            if rec is None or self._stamp(rec) == self._generation:
                return False
            self.collection = rec
            index = self._load_index()
            self.index, self._text_index = index, None
            self._generation = self._stamp(rec)
            log.info("loaded the new index generation of %r (%d vectors)", rec.name, index.ntotal)
            return True

    # -- the model ------------------------------------------------------------------------
    @property
    def encoder(self) -> "ClipEncoder":
        """The collection's model, loaded on first use and checked against its fingerprint."""
        if self._encoder is not None and self._encoder_checked:
            return self._encoder
        with self._load_lock:
            if self._encoder is None:
                from .models.clip import load_encoder

                self._encoder = load_encoder(self.collection.model_spec, self.settings.device, self.settings.precision)
            if not self._encoder_checked:
                self._check_encoder(self._encoder)
                self._encoder_checked = True
            return self._encoder

    def _check_encoder(self, encoder: "ClipEncoder") -> None:
        from .models.clip import fingerprint_id, probes_match

        rec = self.collection
        if encoder.dim != rec.dim:
            raise ModelMismatchError(
                f"collection {rec.name!r} holds {rec.dim}-dimensional vectors but {rec.model_spec!r} "
                f"now gives {encoder.dim}; the model's weights changed since the collection was built")
        recorded = np.frombuffer(rec.fingerprint, dtype="<f4").reshape(-1, rec.dim)
        probe = encoder.probe()
        if not probes_match(probe, recorded):
            raise ModelMismatchError(
                f"the weights behind {rec.model_spec!r} are not the ones collection {rec.name!r} was built with "
                f"(fingerprint {fingerprint_id(probe)} != {rec.fingerprint_id}); restore the original weights, "
                "or index into another --collection")

    # -- the vector indexes -----------------------------------------------------------------
    # Two derived indexes: images (loaded on open) and texts (captions, titles; loaded on first use).
    @property
    def index_path(self) -> Path:
        return self.settings.collection_dir / INDEX_FILE

    def _path(self, kind: VectorKind) -> Path:
        return self.settings.collection_dir / (INDEX_FILE if kind == "images" else TEXT_INDEX_FILE)

    def _index_seq(self, kind: VectorKind) -> int:
        return self.collection.index_seq if kind == "images" else self.collection.text_index_seq

    @property
    def text_index(self) -> VectorIndex:
        """The captions' and titles' index (image->text and text->text search)."""
        if self._text_index is None:
            self._text_index = self._load_index("texts")
        return self._text_index

    def _load_index(self, kind: VectorKind = "images") -> VectorIndex:
        rec = self.collection
        path = self._path(kind)
        if not path.exists():
            return self._build_index(rec.index_factory, save=self.writable, kind=kind)
        for attempt in (1, 2):
            checksum = rec.index_checksum if kind == "images" else rec.text_index_checksum
            note = rec.index_note if kind == "images" else ""
            try:
                if checksum is not None and checksum.startswith(ONDISK_PREFIX):
                    current = getattr(self, "index", None) if kind == "images" else self._text_index
                    index = OnDiskIndex.load(path, rec.index_factory, rec.dim, note, checksum, reuse=current)
                else:
                    index = VectorIndex.load(path, rec.index_factory, rec.dim, note=note, checksum=checksum)
                break
            except VectorIndexError as exc:
                if attempt == 1 and isinstance(exc, IndexChecksumError):
                    # a writer may have replaced the file a moment before recording its checksum
                    time.sleep(0.2)
                    self._refresh()
                    rec = self.collection
                    continue
                log.warning("%s; rebuilding it from the store", exc)
                return self._build_index(rec.index_factory, save=self.writable, kind=kind)
        index = self._reconcile(index, kind)
        if checksum is None and self.writable:  # written before checksums were kept: record one now
            self._save(index, self.store.current_seq(rec.id), kind)
        return index

    def _reconcile(self, index: VectorIndex, kind: VectorKind = "images") -> VectorIndex:
        """Make the index's id set equal the live rows, and re-add rows written after it was saved.

        Every insert and update takes a new sequence number, so when none was taken since the index
        was saved and the row count still equals its size, nothing was added, changed or removed:
        the id sets are not read (at 100M rows that read is minutes). Otherwise they are compared."""
        cid = self.collection.id
        seq = self.store.current_seq(cid)  # read first: later writes look newer, never older
        if seq == self._index_seq(kind) and self.store.count_live(cid, kind) == index.ntotal:
            return index
        live = self.store.live_ids(cid, kind)
        present = index.ids()
        stale = np.setdiff1d(present, live)
        missing = np.setdiff1d(live, present)
        changed = np.intersect1d(self.store.ids_newer_than(cid, self._index_seq(kind), kind), present)
        if not (stale.size or missing.size or changed.size):
            return index
        log.info("reconciling the %s index: %d stale, %d missing, %d changed", kind, stale.size, missing.size,
                 changed.size)
        try:
            index.remove(np.concatenate([stale, changed]).tolist())
        except VectorIndexError:
            return self._build_index(self.collection.index_factory, save=self.writable, kind=kind)
        todo = np.concatenate([missing, changed])
        for start in range(0, todo.size, 8192):
            index.add(*self.store.live_vectors(cid, todo[start : start + 8192].tolist(), kind))  # a writer may remove
        if self.writable:
            self._save(index, seq, kind)
        return index

    def _build_index(self, factory: str, *, save: bool, kind: VectorKind = "images") -> VectorIndex:
        cid = self.collection.id
        seq = self.store.current_seq(cid)
        if is_ondisk(factory):
            index = self._build_ondisk(factory, kind)
        else:
            ids, vecs = self.store.all_vectors(cid, kind)
            index = VectorIndex.build(factory, self.collection.dim, ids, vecs)
        if save:
            self._save(index, seq, kind)
        return index

    def _build_ondisk(self, factory: str, kind: VectorKind) -> VectorIndex:
        """Train, add in shards and merge on disk (see :mod:`searchengine.ondisk`); files are written even
        when the caller records them later. With too few vectors to train, exact search in memory."""
        if not self.writable:
            raise VectorIndexError(f"the {kind} index of collection {self.collection.name!r} ({factory}) is missing "
                                   "or does not match the store; it is built on disk by a writer: run "
                                   "`searchengine rebuild-index`")
        stats = BuildStats()
        try:
            index: VectorIndex = build_from_store(self.store, self.collection.id, kind, factory, self.collection.dim,
                                                  self._path(kind), self._ondisk_options, stats)
        except TooFewVectorsError as exc:
            index = VectorIndex.create(factory, self.collection.dim)
            index.note, index.chosen = f"{FALLBACK_NOTE}: {exc}", "Flat"
            for ids, vecs in self.store.iter_vectors(self.collection.id, kind=kind):
                index.add(ids, vecs)
        if kind == "images":
            self.last_build = stats
        return index

    def _save(self, index: VectorIndex, seq: int, kind: VectorKind = "images") -> None:
        checksum = index.save(self._path(kind))
        self.store.set_index_state(self.collection.id, seq, index.note, kind, checksum)
        self._refresh()
        remove_unused_files(self._path(kind), index)  # earlier builds' lists, once nothing refers to them

    def _refresh(self) -> None:
        self.collection = self.store.require_collection(self.collection.name)

    def save_index(self, complete_to: int | None = None) -> None:
        """Save the in-memory image index (after a writer's batches) and bring the text index up to date.

        ``complete_to``: the store's sequence number the index is known to hold every change up to,
        when a later committed batch may be missing from it (default: it is in step with the store).
        An ``auto`` index that no longer fits the collection's size (it crossed the exact-search
        limit, or grew or shrank 4x since its inverted file was trained) is rebuilt instead."""
        if needs_rechoice(self.index):
            log.info("the collection now holds %d vectors: choosing its index again", self.index.ntotal)
            self.index = self._build_index(self.collection.index_factory, save=True)
        else:
            self._save(self.index, self.store.current_seq(self.collection.id) if complete_to is None else complete_to)
        self.sync_texts()

    def sync_texts(self) -> None:
        """Bring the text index in step with the stored captions and titles (and save it)."""
        if self._text_index is None:
            self._text_index = self._load_index("texts")
        else:
            self._text_index = self._reconcile(self._text_index, "texts")
        if needs_rechoice(self._text_index):
            self._text_index = self._build_index(self.collection.index_factory, save=self.writable, kind="texts")

    def rebuild_index(self, index_factory: str | None = None) -> int:
        """Rebuild the vector indexes from the stored vectors (optionally with another factory)."""
        factory = normalize_factory(index_factory or self.collection.index_factory)
        VectorIndex.create(factory, self.collection.dim)
        if factory == self.collection.index_factory:
            self.index = self._build_index(factory, save=True)
            self._text_index = self._build_index(factory, save=True, kind="texts")
            return self.index.ntotal
        # Another factory: both files are written before the factory is recorded, their checksums
        # after it. A kill in between leaves files whose checksums are not recorded: they are rebuilt
        # on open with the factory that is, never read as an index of another type.
        cid, built = self.collection.id, []
        for kind in ("images", "texts"):
            seq = self.store.current_seq(cid)
            index = self._build_index(factory, save=False, kind=kind)
            built.append((kind, index, seq, index.save(self._path(kind))))
        self.store.set_index_factory(cid, factory)
        for kind, index, seq, checksum in built:
            self.store.set_index_state(cid, seq, index.note, kind, checksum)
            remove_unused_files(self._path(kind), index)
        self._refresh()
        self.index, self._text_index = built[0][1], built[1][1]
        return self.index.ntotal

    def build_index(self, factory: str, *, sample: int | None = None, shard_size: int | None = None) -> int:
        """Build the vector indexes as inverted files on disk, served memory-mapped (``factory``: an
        inverted file such as ``IVF65536,PQ32``; see :mod:`searchengine.ondisk`). ``sample``: training
        vectors; ``shard_size``: vectors per shard before the merge. Returns the image vectors indexed."""
        options = BuildOptions(sample=sample, shard_size=shard_size or BuildOptions.shard_size)
        if options.shard_size < 1 or (sample is not None and sample < 1):
            raise VectorIndexError("the sample and the shard size must be at least 1")
        inner = base_factory(factory)
        self._ondisk_options = options
        try:
            return self.rebuild_index(ONDISK_PREFIX + inner)
        finally:
            self._ondisk_options = BuildOptions()

    # -- queries --------------------------------------------------------------------------
    def search(self, text: str | None = None, image: ImageQuery | None = None, *, query: str | None = None,
               vector: np.ndarray | None = None, filters: FilterSpec = None, k: int = 10,
               mode: SearchMode = "vector", keyword_weight: float = 0.5, min_score: float | None = None,
               sort: Literal["score", "date"] = "score", dedup: float | bool | None = None,
               group: bool = True, rerank: "bool | str | Reranker" = False, rerank_top: int = 20,
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
        if caption or ask is not None:
            hits = self.search(text, image, query=query, vector=vector, filters=filters, k=k, mode=mode,
                               keyword_weight=keyword_weight, min_score=min_score, sort=sort, dedup=dedup, group=group)
            return self._annotate(hits, caption, ask)
        if k < 1:
            raise QueryError("k must be at least 1")
        if mode not in ("vector", "keyword", "hybrid"):
            raise QueryError(f"unknown search mode {mode!r}; use vector, keyword or hybrid")
        if not 0.0 <= keyword_weight <= 1.0:
            raise QueryError("keyword_weight must be between 0 and 1")
        if sort not in ("score", "date"):
            raise QueryError(f"unknown sort order {sort!r}; use score or date")
        threshold = 0.95 if dedup is True else (float(dedup) if dedup else None)
        if threshold is not None and not 0 < threshold <= 1:
            raise QueryError("the dedup threshold must be in (0, 1]")
        words, qvec = self._query(text, image, query, vector, mode)
        condition = self._condition(filters)
        allowed = None if condition is None else self.store.filtered_ids(self.collection.id, condition)
        everything = sort == "date" and min_score is not None
        n = max(16, 4 * k) if mode == "vector" else max(100, 4 * k)  # fusion needs deep lists from both sides
        while True:
            vec_ranked = self._vector_ranking(qvec, n, allowed) if mode != "keyword" else []
            kw_ranked = self.store.keyword_search(self.collection.id, words, n, condition) if mode != "vector" else []
            exhausted = len(vec_ranked) < n and len(kw_ranked) < n
            ranked = {"vector": vec_ranked, "keyword": kw_ranked}.get(mode) or fuse(
                vec_ranked, kw_ranked, keyword_weight)
            hits = self._hits(ranked, group)
            if min_score is not None:
                below = any(h.score < min_score for h in hits)
                hits = [h for h in hits if h.score >= min_score]
                exhausted = exhausted or below
            if threshold is not None:
                hits = self._dedup(hits, threshold)
            if exhausted or (len(hits) >= k and not everything):
                break
            n *= 4
        return (_by_date(hits if everything else hits[:k]) if sort == "date" else hits)[:k]

    def _reranked(self, text, image, query, vector, filters, k, mode, keyword_weight, min_score, sort, dedup, group,
                  rerank, rerank_top, caption, ask) -> list[Hit]:
        from .query import parse_query
        from .stages import rerank_hits

        if rerank_top < 1:
            raise QueryError("rerank_top must be at least 1")
        words = text or ""
        if query is not None:
            words = " ".join(p.value for p in parse_query(query) if p.kind == "text" and p.weight > 0)
        if not words.strip():
            raise QueryError("reranking compares the query's words with each hit: give a text query")
        reranker = rerank if not isinstance(rerank, (bool, str)) else self.reranker(
            rerank if isinstance(rerank, str) else None)
        first = self.search(text, image, query=query, vector=vector, filters=filters, k=max(k, rerank_top), mode=mode,
                            keyword_weight=keyword_weight, dedup=dedup, group=group)
        hits = rerank_hits(reranker, words, first)
        if min_score is not None:
            hits = [h for h in hits if h.score >= min_score]
        hits = _by_date(hits) if sort == "date" else hits
        return self._annotate(hits[:k], caption, ask)

    # -- looking closer: rerankers, captions, answers, zero-shot ----------------------------
    def _stage(self, task: str, spec: str, load: Any) -> Any:
        with self._load_lock:
            if (task, spec) not in self._stages:
                self._stages[(task, spec)] = load(spec, self.settings.device)
            return self._stages[(task, spec)]

    def reranker(self, spec: str | None = None) -> "Reranker":
        """A reranker (loaded once per engine): see :func:`searchengine.stages.load_reranker`."""
        from .stages import load_reranker, rerank_spec

        return self._stage("rerank", rerank_spec(spec), load_reranker)

    def captioner(self, spec: str | None = None) -> Any:
        from .models.vlm import load_vlm
        from .stages import caption_spec

        return self._stage("caption", caption_spec(spec), lambda s, d: load_vlm(s, "caption", d))

    def answerer(self, spec: str | None = None) -> Any:
        from .models.vlm import load_vlm
        from .stages import vqa_spec

        return self._stage("vqa", vqa_spec(spec), lambda s, d: load_vlm(s, "vqa", d))

    def caption(self, images: Sequence[ImageQuery], model: str | None = None) -> list[str]:
        """A caption for each image (a path, bytes or PIL image), cached per content and model."""
        from .stages import generate_cached

        captioner = self.captioner(model)
        return generate_cached(self.store, "caption", captioner.spec, "", list(images), captioner.generate)

    def ask(self, images: Sequence[ImageQuery], question: str, model: str | None = None) -> list[str]:
        """An answer to ``question`` for each image, cached per (content, question, model)."""
        from .stages import generate_cached

        if not question or not question.strip():
            raise QueryError("empty question")
        answerer = self.answerer(model)
        return generate_cached(self.store, "answer", answerer.spec, question.strip(), list(images),
                               lambda ims: answerer.predict_answers(ims, question.strip()))

    def _annotate(self, hits: list[Hit], caption: bool | str, ask: str | None) -> list[Hit]:
        from dataclasses import replace

        from .stages import generate_cached

        if not hits:
            return hits
        rows = self.store.images_by_ids(self.collection.id, [h.id for h in hits])
        keys = [rows[h.id].content_hash for h in hits]
        paths = [h.path for h in hits]
        if caption:
            model = self.captioner(caption if isinstance(caption, str) else None)
            texts = generate_cached(self.store, "caption", model.spec, "", paths, model.generate, keys)
            hits = [replace(h, generated_caption=t) for h, t in zip(hits, texts)]
        if ask is not None:
            if not ask.strip():
                raise QueryError("empty question")
            model = self.answerer()
            texts = generate_cached(self.store, "answer", model.spec, ask.strip(), paths,
                                    lambda ims: model.predict_answers(ims, ask.strip()), keys)
            hits = [replace(h, answer=t) for h, t in zip(hits, texts)]
        return hits

    def caption_collection(self, model: str | None = None, progress: Any = None) -> int:
        """Caption every image without a searchable generated caption (``index --caption``): the
        captions join keyword search and image->text search. Returns how many images were done."""
        from .stages import caption_collection

        return caption_collection(self, self.captioner(model), progress)

    def classify(self, images: Sequence[ImageQuery], labels: Sequence[str],
                 templates: Sequence[str] | None = None) -> list[list[tuple[str, float]]]:
        """Zero-shot: per image, ``(label, probability)`` best first. The probabilities sum to 1 over
        the given labels: they say which label fits best relative to the others, not how well."""
        from .stages import classify_vectors

        vecs = np.stack([self._image_vector(im) for im in images]) if images else np.zeros((0, self.collection.dim))
        probs = classify_vectors(self.encoder, vecs, list(labels), templates)
        return [sorted(zip(labels, map(float, p)), key=lambda x: -x[1]) for p in probs]

    def tag(self, labels: Sequence[str], *, threshold: float = 0.3, top: int = 3,
            templates: Sequence[str] | None = None) -> "TagReport":
        """Zero-shot tags for the whole collection from its stored vectors (replacing earlier tags);
        they become a filter field (``tag = cat``) and keyword text."""
        from .stages import tag_collection

        return tag_collection(self, list(labels), threshold=threshold, top=top, templates=templates)

    def search_text(self, text: str, k: int = 10, **options: Any) -> list[Hit]:
        """Images ranked by similarity to a text."""
        return self.search(text=text, k=k, **options)

    def search_image(self, image: ImageQuery, k: int = 10, **options: Any) -> list[Hit]:
        """Images ranked by similarity to an image (a path, bytes, a file object or a PIL image)."""
        return self.search(image=image, k=k, **options)

    def search_vector(self, vector: np.ndarray, k: int = 10, **options: Any) -> list[Hit]:
        """Images ranked by inner product with an L2-normalised vector of the collection's model."""
        return self.search(vector=vector, k=k, **options)

    def image(self, image_id: int) -> Hit:
        """One image with everything stored about it (score 1.0); NotFoundError when it is gone."""
        hits = self._hits([(int(image_id), 1.0)], group=False)
        if not hits:
            raise NotFoundError(f"no image with id {image_id} in collection {self.collection.name!r}")
        return hits[0]

    def image_vector(self, image_id: int) -> np.ndarray:
        """The stored vector of an indexed image."""
        found, vecs = self.store.live_vectors(self.collection.id, [int(image_id)])
        if not len(found):
            raise NotFoundError(f"no image with id {image_id} in collection {self.collection.name!r}")
        return vecs[0]

    def similar(self, image_id: int, k: int = 10, **options: Any) -> list[Hit]:
        """Images most like the indexed image ``image_id`` (itself left out); ``options`` as :meth:`search`."""
        hits = self.search(vector=self.image_vector(image_id), k=k + 1, **options)
        return [h for h in hits if h.id != int(image_id)][:k]

    def search_texts(self, text: str | None = None, image: ImageQuery | None = None, *, k: int = 10,
                     field: str | None = None, vector: np.ndarray | None = None) -> list[TextHit]:
        """Captions and product titles for an image (image->text), a text (text->text) or a vector, best first."""
        self.refresh()
        if k < 1:
            raise QueryError("k must be at least 1")
        if sum(x is not None for x in (text, image, vector)) != 1:
            raise QueryError("give one of a text, an image or a vector")
        qvec = (self._text_vector(text) if text is not None else self._image_vector(image) if image is not None
                else _normalized(np.asarray(vector, np.float32)))
        n = k if field is None else 4 * k
        while True:
            scores, ids = self._search_index(self.text_index, qvec.reshape(1, -1), n + 8, kind="texts")
            pairs = [(int(i), float(sc)) for i, sc in zip(ids[0], scores[0]) if i >= 0]
            rows = self.store.texts_by_ids(self.collection.id, [i for i, _ in pairs])
            found = [(rows[i], sc) for i, sc in pairs if i in rows and (field is None or rows[i].field == field)]
            if len(found) >= k or len(pairs) < n + 8:
                break
            n *= 4
        found = found[:k]
        images = self.store.images_by_ids(self.collection.id, [r.image_id for r, _ in found if r.image_id])
        products = self.store.products_by_ids(self.collection.id, [r.product_id for r, _ in found if r.product_id])
        return [TextHit(id=r.id, score=sc, text=r.text, field=r.field, image_id=r.image_id,
                        path=images[r.image_id].path if r.image_id in images else None,
                        product_id=products[r.product_id].key if r.product_id in products else None)
                for r, sc in found]

    def embed_query(self, query: str) -> np.ndarray:
        """The vector of a composed query (see :mod:`searchengine.query`), L2-normalised."""
        from .query import parse_query

        parts = parse_query(query)
        total = np.zeros(self.collection.dim, dtype=np.float32)
        for part in parts:
            vec = self._text_vector(part.value) if part.kind == "text" else self._image_vector(part.value)
            total += part.weight * vec
        return _normalized(total)

    # -- query helpers --------------------------------------------------------------------
    def _query(self, text, image, query, vector, mode: str) -> tuple[str, np.ndarray | None]:
        """(the words for keyword search, the query vector) of a search's inputs."""
        given = [x is not None for x in (text, image, query, vector)]
        if not any(given):
            raise QueryError("nothing to search for: give a text, an image, a query or a vector")
        if query is not None and any(given[:2] + given[3:]):
            raise QueryError("give either a composed query or text/image/vector, not both")
        if text is not None and not text.strip():
            raise QueryError("empty text query")
        words = text or ""
        if query is not None:
            from .query import parse_query

            words = " ".join(p.value for p in parse_query(query) if p.kind == "text" and p.weight > 0)
        if mode != "vector" and not words.strip():
            raise QueryError(f"{mode} search needs words: give a text query")
        if mode == "keyword":
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
            parts.append(self._text_vector(text))
        if image is not None:
            parts.append(self._image_vector(image))
        return words, parts[0] if len(parts) == 1 else _normalized(np.sum(parts, axis=0))

    def _text_vector(self, text: str) -> np.ndarray:
        if not text or not text.strip():
            raise QueryError("empty text query")
        return self.encoder.encode_texts([text.strip()])[0]

    def _image_vector(self, image: ImageQuery) -> np.ndarray:
        from PIL import Image

        from .errors import ImageDecodeError
        from .imaging import safe_open, to_rgb

        if isinstance(image, Image.Image):
            pil = to_rgb(image)  # as the indexer sees pixels: alpha over white, any mode
        else:
            try:
                pil = safe_open(image, max_pixels=self.settings.max_pixels, draft_size=self.encoder.image_size)
            except ImageDecodeError as exc:
                raise QueryError(f"cannot read the query image: {exc}") from exc
        return self.encoder.encode_images([pil])[0]

    @staticmethod
    def _condition(filters: FilterSpec):
        from .filters import as_filter
        from .store import filter_condition

        node = as_filter(filters)
        return None if node is None else filter_condition(node)

    def _vector_ranking(self, qvec: np.ndarray, n: int, allowed: np.ndarray | None) -> list[tuple[int, float]]:
        """The top ``n`` (id, score) by the vector index, among ``allowed`` ids when given.

        A selective filter (at most a quarter of the collection) searches through a faiss id
        selector; a broad one oversamples and filters. Approximate indexes can come back short
        under a selector (HNSW's graph walk); then the allowed vectors are scored exactly. A lossy
        index's candidates are re-ranked exactly (:meth:`_search_index`).
        """
        total = self.index.ntotal
        q = np.asarray(qvec, dtype=np.float32).reshape(1, -1)
        if allowed is None:
            scores, ids = self._search_index(self.index, q, n + max(8, n // 4))  # rows removed by another process
            return [(int(i), float(sc)) for i, sc in zip(ids[0], scores[0]) if i >= 0]
        want = min(n, len(allowed))
        if want == 0:
            return []
        found: list[tuple[int, float]] = []
        if len(allowed) * 4 > total:
            scores, ids = self._search_index(self.index, q, int(n * total / len(allowed) * 1.5) + 16)
            keep = np.isin(ids[0], allowed)
            found = [(int(i), float(sc)) for i, sc in zip(ids[0][keep], scores[0][keep])]
        if len(found) < want:
            scores, ids = self._search_index(self.index, q, want, allowed=allowed)
            found = [(int(i), float(sc)) for i, sc in zip(ids[0], scores[0]) if i >= 0]
        if len(found) < want:
            live = self.store.live_ids(self.collection.id)
            ids, sims = self._exact_top(np.intersect1d(allowed, live).tolist(), q, n)
            found = [(int(i), float(sc)) for i, sc in zip(ids, sims)]
        return found[:n]

    def _search_index(self, index: VectorIndex, q: np.ndarray, k: int, allowed: np.ndarray | None = None,
                      kind: VectorKind = "images") -> tuple[np.ndarray, np.ndarray]:
        """``index.search`` of one query row; a lossy index's ``RERANK_FACTOR * k`` candidates are
        re-scored exactly with the stored vectors (rows removed meanwhile drop out) and the top ``k`` kept."""
        if not index.lossy:
            return index.search(q, k, allowed=allowed)
        _, cand = index.search(q, k * RERANK_FACTOR, allowed=allowed)
        ids, sims = self._exact_top(cand[0][cand[0] >= 0].tolist(), q, k, kind)
        return sims.astype(np.float32).reshape(1, -1), ids.reshape(1, -1)

    def _exact_top(self, ids: Sequence[int], q: np.ndarray, k: int,
                   kind: VectorKind = "images") -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of the best ``k`` of ``ids`` by exact inner product with their stored vectors,
        best first; rows a writer removed meanwhile drop out."""
        found, vecs = self.store.live_vectors(self.collection.id, ids, kind)
        sims = vecs @ q[0]
        top = np.argsort(-sims, kind="stable")[:k]
        return found[top], sims[top]

    def _hits(self, ranked: list[tuple[int, float]], group: bool) -> list[Hit]:
        """Join ranked ids through the store; with ``group``, one hit per product (its best image)."""
        cid = self.collection.id
        rows = self.store.images_by_ids(cid, [i for i, _ in ranked])
        ranked = [(i, sc) for i, sc in ranked if i in rows]  # removed since the index was loaded
        attrs = self.store.attributes_of_images(rows)
        owners = self.store.products_of_images(cid, rows)
        hits: list[Hit] = []
        seen: set[int] = set()
        for image_id, score in ranked:
            products = owners.get(image_id) or [None]
            for product in products if group else products[:1]:
                if group and product is not None:
                    if product.id in seen:
                        continue
                    seen.add(product.id)
                hits.append(Hit.from_record(rows[image_id], score, attrs.get(image_id), product))
                if not group:
                    break
        return hits

    def _dedup(self, hits: list[Hit], threshold: float) -> list[Hit]:
        """Drop each hit whose image is a near-duplicate (cosine >= threshold) of a better one."""
        if len(hits) < 2:
            return hits
        found, vecs = self.store.live_vectors(self.collection.id, [h.id for h in hits])
        stored = set(found.tolist())
        hits = [h for h in hits if h.id in stored]  # a writer may have removed the others meanwhile
        kept: list[int] = []
        for i in range(len(hits)):
            if not kept or float(np.max(vecs[kept] @ vecs[i])) < threshold - 1e-3:
                kept.append(i)
        return [hits[i] for i in kept]

    # -- status ---------------------------------------------------------------------------
    def status(self) -> CollectionStatus:
        rec = self.collection
        return CollectionStatus(
            collection=rec.name, model=rec.model_spec, dim=rec.dim, fingerprint=rec.fingerprint_id,
            images=self.store.count_images(rec.id), errors=self.store.count_errors(rec.id),
            products=self.store.count_products(rec.id), texts=self.store.count_texts(rec.id),
            index_factory=rec.index_factory, index_in_use=self.index.chosen, index_type=self.index.inner_type,
            index_vectors=self.index.ntotal, index_nprobe=self.index.nprobe,
            index_note=self.index.note, data_dir=str(self.settings.data_dir),
            database=self.store.engine.url.render_as_string(hide_password=True),
            schema_version=self.store.schema_version(), index_storage=self.index.storage)

    def near_duplicates(self, threshold: float = 0.95) -> list[list[Hit]]:
        """Groups of images whose embeddings have cosine >= ``threshold`` (linked transitively).

        Each group is sorted by path, ``score`` being the best similarity to another member;
        groups come largest first. Exact search over all stored vectors: O(n^2), meant for
        collections up to a few hundred thousand images.
        """
        import faiss

        if not 0 < threshold <= 1:
            raise QueryError("the duplicate threshold must be in (0, 1]")
        ids, vecs = self.store.all_vectors(self.collection.id)
        if not len(ids):
            return []
        flat = faiss.IndexFlatIP(vecs.shape[1])
        flat.add(vecs)
        lims, sims, found = flat.range_search(vecs, threshold - 1e-3)  # float16 storage: a little slack
        parent = list(range(len(ids)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        best = np.zeros(len(ids), np.float32)
        for i in range(len(ids)):
            for j, sim in zip(found[lims[i] : lims[i + 1]], sims[lims[i] : lims[i + 1]]):
                if j != i and sim >= threshold - 1e-3:
                    parent[root(i)] = root(int(j))
                    best[i] = max(best[i], min(float(sim), 1.0))
        groups: dict[int, list[int]] = {}
        for i in range(len(ids)):
            groups.setdefault(root(i), []).append(i)
        rows = self.store.images_by_ids(self.collection.id, [int(ids[i]) for g in groups.values() if len(g) > 1
                                                             for i in g])
        out = []
        for members in groups.values():
            if len(members) > 1:
                hits = [Hit.from_record(rows[int(ids[i])], float(best[i])) for i in members]
                out.append(sorted(hits, key=lambda h: h.path))
        return sorted(out, key=lambda g: (-len(g), g[0].path))

    def errors(self) -> list[FileErrorRecord]:
        """Files that could not be indexed, with the reason."""
        return self.store.file_errors(self.collection.id)
