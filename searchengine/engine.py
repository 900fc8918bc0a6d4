"""SearchEngine: the query API behind the CLI, the HTTP API and Python users."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Union

import numpy as np

from .config import Settings
from .errors import CollectionNotFoundError, ModelMismatchError, QueryError, VectorIndexError
from .store import CollectionRecord, FileErrorRecord, ImageRecord, Store
from .vectors import VectorIndex, normalize_factory

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from .models.clip import ClipEncoder

__all__ = ["SearchEngine", "Hit", "CollectionStatus", "ImageQuery"]

log = logging.getLogger(__name__)

ImageQuery = Union[str, os.PathLike, bytes, BinaryIO, "Image.Image"]
INDEX_FILE = "index.faiss"


@dataclass(frozen=True)
class Hit:
    """One search result, joined through the store."""

    id: int
    path: str
    score: float
    width: int
    height: int
    size: int
    mtime: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, rec: ImageRecord, score: float) -> "Hit":
        return cls(id=rec.id, path=rec.path, score=score, width=rec.width, height=rec.height, size=rec.size,
                   mtime=rec.mtime)


@dataclass(frozen=True)
class CollectionStatus:
    collection: str
    model: str
    dim: int
    fingerprint: str
    images: int
    errors: int
    index_factory: str
    index_type: str
    index_vectors: int
    index_note: str
    data_dir: str
    database: str
    schema_version: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
                 encoder: "ClipEncoder | None" = None, *, writable: bool = False) -> None:
        self.settings = settings
        self.store = store
        self.collection = collection
        self.writable = writable
        self._encoder = encoder
        self._encoder_checked = False
        self.index = self._load_index()

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
        store = Store(settings.database_url)
        try:
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
            return cls(settings, store, record, encoder, writable=create if writable is None else writable)
        except BaseException:
            store.close()
            raise

    @staticmethod
    def _create(store: Store, settings: Settings) -> "tuple[CollectionRecord, ClipEncoder]":
        from .models.clip import fingerprint_id, load_default_encoder

        factory = normalize_factory(settings.index_factory)
        encoder = load_default_encoder(canonical_spec(settings.model) if settings.model else None, settings.device)
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
        self.store.close()

    # -- the model ------------------------------------------------------------------------
    @property
    def encoder(self) -> "ClipEncoder":
        """The collection's model, loaded on first use and checked against its fingerprint."""
        if self._encoder is None:
            from .models.clip import load_encoder

            self._encoder = load_encoder(self.collection.model_spec, self.settings.device)
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

    # -- the vector index -----------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.settings.collection_dir / INDEX_FILE

    def _load_index(self) -> VectorIndex:
        rec = self.collection
        if not self.index_path.exists():
            return self._build_index(rec.index_factory, save=self.writable)
        try:
            index = VectorIndex.load(self.index_path, rec.index_factory, rec.dim, note=rec.index_note)
        except VectorIndexError as exc:
            log.warning("%s; rebuilding it from the store", exc)
            return self._build_index(rec.index_factory, save=self.writable)
        return self._reconcile(index)

    def _reconcile(self, index: VectorIndex) -> VectorIndex:
        """Make the index's id set equal the live rows, and re-add rows written after it was saved."""
        cid = self.collection.id
        seq = self.store.current_seq(cid)  # read first: later writes look newer, never older
        live = self.store.live_ids(cid)
        present = index.ids()
        stale = np.setdiff1d(present, live)
        missing = np.setdiff1d(live, present)
        changed = np.intersect1d(self.store.ids_newer_than(cid, self.collection.index_seq), present)
        if not (stale.size or missing.size or changed.size):
            return index
        log.info("reconciling the index: %d stale, %d missing, %d changed", stale.size, missing.size, changed.size)
        try:
            index.remove(np.concatenate([stale, changed]).tolist())
        except VectorIndexError:
            return self._build_index(self.collection.index_factory, save=self.writable)
        todo = np.concatenate([missing, changed])
        for start in range(0, todo.size, 8192):
            chunk = todo[start : start + 8192]
            index.add(chunk, self.store.vectors_for(cid, chunk.tolist()))
        if self.writable:
            self._save(index, seq)
        return index

    def _build_index(self, factory: str, *, save: bool) -> VectorIndex:
        cid = self.collection.id
        seq = self.store.current_seq(cid)
        ids, vecs = self.store.all_vectors(cid)
        index = VectorIndex.build(factory, self.collection.dim, ids, vecs)
        if save:
            self._save(index, seq)
        return index

    def _save(self, index: VectorIndex, seq: int) -> None:
        index.save(self.index_path)
        self.store.set_index_state(self.collection.id, seq, index.note)
        self._refresh()

    def _refresh(self) -> None:
        self.collection = self.store.require_collection(self.collection.name)

    def save_index(self) -> None:
        """Save the in-memory index (after a writer's batches) and record what it reflects."""
        self._save(self.index, self.store.current_seq(self.collection.id))

    def rebuild_index(self, index_factory: str | None = None) -> int:
        """Rebuild the vector index from the stored vectors (optionally with another factory)."""
        factory = normalize_factory(index_factory or self.collection.index_factory)
        VectorIndex.create(factory, self.collection.dim)
        if factory != self.collection.index_factory:
            self.store.set_index_factory(self.collection.id, factory)
            self._refresh()
        self.index = self._build_index(factory, save=True)
        return self.index.ntotal

    # -- queries --------------------------------------------------------------------------
    def search_text(self, text: str, k: int = 10) -> list[Hit]:
        """Images ranked by similarity to a text."""
        if not text or not text.strip():
            raise QueryError("empty text query")
        return self.search_vector(self.encoder.encode_texts([text.strip()])[0], k)

    def search_image(self, image: ImageQuery, k: int = 10) -> list[Hit]:
        """Images ranked by similarity to an image (a path, bytes, a file object or a PIL image)."""
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
        return self.search_vector(self.encoder.encode_images([pil])[0], k)

    def search_vector(self, vector: np.ndarray, k: int = 10) -> list[Hit]:
        """Images ranked by inner product with an L2-normalised vector of the collection's model."""
        if k < 1:
            raise QueryError("k must be at least 1")
        # a few extra candidates, in case another process removed rows since this index was loaded
        scores, ids = self.index.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), k + max(8, k // 4))
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        rows = self.store.images_by_ids(self.collection.id, [i for i, _ in pairs])
        hits = [Hit.from_record(rows[i], s) for i, s in pairs if i in rows]
        return hits[:k]

    # -- status ---------------------------------------------------------------------------
    def status(self) -> CollectionStatus:
        rec = self.collection
        return CollectionStatus(
            collection=rec.name, model=rec.model_spec, dim=rec.dim, fingerprint=rec.fingerprint_id,
            images=self.store.count_images(rec.id), errors=self.store.count_errors(rec.id),
            index_factory=rec.index_factory, index_type=self.index.inner_type, index_vectors=self.index.ntotal,
            index_note=self.index.note, data_dir=str(self.settings.data_dir),
            database=self.store.engine.url.render_as_string(hide_password=True),
            schema_version=self.store.schema_version())

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
