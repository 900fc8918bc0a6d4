"""The vector index: an inner-product faiss index whose ids are the SQL keys.

Inverted files (``IVF...``) hold the ids themselves; every other type is wrapped in
``IndexIDMap2``. (An ``IndexIDMap2`` around an inverted file cannot remove: faiss renumbers its
map but not the file, so the ids drift apart and the next removal aborts the process.)

The index is derived data. It is built from the store's vectors, saved atomically
(temp file, fsync, ``os.replace``), and reconciled with the store on open. The factory
string is configuration: ``"auto"`` (the default), ``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``,
``"IVF4096,PQ32"``, ``"SQ8"``... (a leading ``IDMap2,`` is accepted and implied).

``auto`` picks by collection size (:func:`choose_factory`): exact ``Flat`` search below
:data:`AUTO_EXACT_LIMIT` vectors, above it an inverted file over float16 vectors
(``IVF{nlist},SQfp16``: lossless against the store, which keeps float16) trained on a sample of the
stored vectors, with ``nprobe`` raised until recall@10 against exact search reaches
:data:`AUTO_TARGET_RECALL` on held-out stored vectors. The choice and its measured recall are
the index's :attr:`VectorIndex.note` (shown by ``status``).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import ConfigError, IndexChecksumError, VectorIndexError

__all__ = ["VectorIndex", "write_index", "file_checksum", "normalize_factory", "choose_factory", "needs_rechoice", "AUTO", "AUTO_EXACT_LIMIT", "AUTO_TARGET_RECALL"]

AUTO = "auto"
#: below this many vectors ``auto`` searches exactly (Flat: about 18 ms per query at 100k x 512 on 2 cores)
AUTO_EXACT_LIMIT = 100_000
#: recall@10 against exact search that ``auto`` tunes nprobe for (on held-out stored vectors)
AUTO_TARGET_RECALL = 0.97
#: A lossy index (product-quantised codes, :func:`is_lossy`) is asked for this many times the
#: candidates wanted, which the engine re-ranks by exact inner products with the vectors the store
#: keeps (float16); Flat and SQ indexes are searched as they are. Calibration measures recall the
#: same way: the true top 10 among the candidates the re-rank would see.
RERANK_FACTOR = 10
_CALIBRATION_QUERIES = 200
#: how the note of an index that could not be trained yet begins (it searches exactly until a rebuild)
FALLBACK_NOTE = "exact Flat search for now"


def choose_factory(n: int) -> str:
    """The concrete factory ``auto`` uses for ``n`` vectors."""
    if n < AUTO_EXACT_LIMIT:
        return "Flat"
    return f"IVF{_nlist(n)},SQfp16"


def _nlist(n: int) -> int:
    """About sqrt(n) lists, a power of two: 1M vectors -> 1024 lists of ~1,000."""
    return int(2 ** round(np.log2(max(n, 1) ** 0.5)))


def needs_rechoice(index: "VectorIndex") -> bool:
    """Whether an ``auto`` index no longer fits its size, with hysteresis so a collection that hovers
    near a boundary is not rebuilt on every change: exact search grows into an inverted file at
    :data:`AUTO_EXACT_LIMIT` vectors but goes back only below half of it, and an inverted file is
    retrained when sqrt(n) is more than 2x away from its lists (the size moved 4x)."""
    if index.factory != AUTO or index.untrained_fallback:
        return False  # an untrained fallback is rebuilt by the writer when vectors are added
    n, have = index.ntotal, index.chosen
    if have == "Flat":
        return n >= AUTO_EXACT_LIMIT
    if n < AUTO_EXACT_LIMIT // 2:
        return True
    nlist = _ivf_lists(have)
    return nlist is None or not 0.5 <= max(n, 1) ** 0.5 / nlist <= 2


def _ivf_lists(factory: str) -> int | None:
    match = re.match(r"IVF(\d+)", factory)
    return int(match.group(1)) if match else None


def normalize_factory(factory: str) -> str:
    """The inner factory string: whitespace and a leading ``IDMap,``/``IDMap2,`` removed."""
    text = factory.replace(" ", "")
    for prefix in ("IDMap2,", "IDMap,"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if not text:
        raise ConfigError("empty index factory string")
    return text


def _make(factory: str, dim: int):
    import faiss

    if normalize_factory(factory) == AUTO:
        factory = "Flat"  # an empty auto index; build() chooses by size
    from .ondisk import base_factory, is_ondisk

    if is_ondisk(factory):
        base_factory(factory)  # checked here; searchengine.ondisk builds it from the store
        factory = "Flat"  # searched exactly until there are vectors to build it on disk from
    try:
        inner = faiss.index_factory(dim, normalize_factory(factory), faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(f"invalid faiss index factory {factory!r}: {str(exc).strip().splitlines()[-1]}") from exc
    if isinstance(inner, faiss.IndexIVF):  # index_factory returns the concrete type
        return inner  # keeps the ids itself (see the module docstring)
    return faiss.IndexIDMap2(inner)


def _inner(index):
    """The index that does the searching: inside the IndexIDMap2, or the inverted file itself."""
    import faiss

    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index


def is_lossy(index) -> bool:
    """Whether a faiss index keeps product-quantised codes (PQ of any kind, OPQ included), whose
    scores are approximations that a search should re-rank exactly. Flat and SQ codes are not."""
    import faiss

    inner = _inner(faiss.downcast_index(index))
    while isinstance(inner, faiss.IndexPreTransform):  # OPQ and other rotations before the codes
        inner = faiss.downcast_index(inner.index)
    return isinstance(inner, (faiss.IndexPQ, faiss.IndexIVFPQ, faiss.IndexPQFastScan,
                              faiss.IndexIVFPQFastScan, faiss.IndexHNSWPQ))


class VectorIndex:
    """A faiss index of L2-normalised float32 vectors keyed by int64 ids."""

    def __init__(self, index, factory: str, dim: int, note: str = "", chosen: str | None = None) -> None:
        self._index = index
        self.factory = normalize_factory(factory)
        self.dim = dim
        #: Why the index in use differs from the factory asked for (e.g. too few vectors to train),
        #: or what ``auto`` chose and the recall it measured.
        self.note = note
        #: the concrete factory in use (``auto`` resolved)
        self.chosen = chosen or _describe(index, self.factory)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(cls, factory: str, dim: int) -> "VectorIndex":
        """An empty index; it may need training before vectors can be added."""
        return cls(_make(factory, dim), factory, dim)

    @classmethod
    def build(cls, factory: str, dim: int, ids: np.ndarray, vectors: np.ndarray) -> "VectorIndex":
        """Build from all vectors, training first when the factory needs it.

        With too few vectors to train (say ``IVF4096`` over 500 images) the index falls back to
        exact ``Flat`` search and records why in :attr:`note`; a later rebuild trains it.
        ``auto`` chooses the factory by size (:func:`choose_factory`) and tunes ``nprobe``.
        """
        factory = normalize_factory(factory)
        from .ondisk import is_ondisk

        if is_ondisk(factory):
            raise VectorIndexError(f"{factory!r} is built on disk from the store (searchengine.ondisk), not in memory")
        concrete = choose_factory(len(ids)) if factory == AUTO else factory
        vi = cls(_make(concrete, dim), factory, dim, chosen=concrete)
        if not vi.is_trained:
            try:
                mat = _as_matrix(vectors, dim)
                vi._index.train(_training_sample(mat, concrete) if factory == AUTO else mat)
            except RuntimeError as exc:
                reason = str(exc).strip().splitlines()[-1]
                vi = cls(_make("Flat", dim), factory, dim, note=f"{FALLBACK_NOTE}: {reason}", chosen="Flat")
        if len(ids):
            vi.add(ids, vectors)
        if factory == AUTO and not vi.untrained_fallback:
            if vi.chosen == "Flat":
                vi.note = f"auto: exact Flat search below {AUTO_EXACT_LIMIT:,} vectors"
            else:
                nprobe, recall = vi.tune_nprobe(np.asarray(ids), vectors)
                vi.note = (f"auto: {vi.chosen} trained at {len(ids):,} vectors, nprobe {nprobe}: recall@10 "
                           f"{recall:.3f} of exact on {min(len(ids), _CALIBRATION_QUERIES)} stored vectors")
        return vi

    def tune_nprobe(self, ids: np.ndarray, vectors: np.ndarray, target: float = AUTO_TARGET_RECALL,
                    queries: int = _CALIBRATION_QUERIES, seed: int = 0) -> tuple[int, float]:
        """Raise an inverted file's ``nprobe`` (powers of two) until recall@10 against exact search,
        for stored vectors used as queries (each one's own id left out), reaches ``target``. For a
        lossy index, recall is of what the engine returns: the true top 10 among the
        ``RERANK_FACTOR * 10`` candidates it re-ranks exactly.

        It starts at nlist/64 (at least 8): queries from the other modality (texts searching images,
        images searching texts) sit farther from the stored vectors than the calibration queries,
        so the margin is kept even when the stored vectors alone would accept fewer lists."""
        import faiss

        ivf = faiss.extract_index_ivf(self._index)
        mat = _as_matrix(vectors, self.dim)
        k = min(10, len(mat) - 1)
        if k < 1:
            return int(ivf.nprobe), 1.0
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(mat), size=min(queries, len(mat)), replace=False)
        q = mat[rows]
        _, exact = faiss.knn(q, mat, k + 1, metric=faiss.METRIC_INNER_PRODUCT)  # exact, in bounded blocks
        truth = [set(ids[[r for r in top if r != row][:k]].tolist()) for top, row in zip(exact, rows)]
        nprobe, recall = min(ivf.nlist, max(8, ivf.nlist // 64)), 0.0
        candidates = k * (RERANK_FACTOR if self.lossy else 1)
        while True:
            ivf.nprobe = nprobe
            _, found = self._index.search(q, candidates + 1)
            recall = float(np.mean([len(t & (set(f.tolist()) - {int(ids[r])})) / k
                                    for t, f, r in zip(truth, found, rows)]))
            if recall >= target or nprobe >= ivf.nlist:
                return nprobe, recall
            nprobe = min(nprobe * 2, ivf.nlist)

    # -- properties -----------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def inner_type(self) -> str:
        import faiss

        inner = _inner(self._index)
        name = type(inner).__name__
        if name == "IndexFlat" and inner.metric_type == faiss.METRIC_INNER_PRODUCT:
            return "IndexFlatIP"  # index_factory builds IndexFlat(IP); read_index gives IndexFlatIP
        return name

    @property
    def lossy(self) -> bool:
        """Whether the index keeps product-quantised codes (see :func:`is_lossy`)."""
        return is_lossy(self._index)

    @property
    def storage(self) -> str:
        """Where the vectors live (an on-disk index says which file, see :mod:`searchengine.ondisk`)."""
        return "in memory"

    @property
    def faiss_index(self):
        return self._index

    def ids(self) -> np.ndarray:
        import faiss

        if isinstance(self._index, faiss.IndexIDMap2):
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)
        lists = self._index.invlists  # an inverted file: the ids stored in its lists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                 for i in range(lists.nlist) if lists.list_size(i)]
        return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    # -- mutation -------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not self.is_trained:
            raise VectorIndexError("the index must be trained before vectors are added; rebuild it")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        mat = _as_matrix(vectors, self.dim)
        if len(ids) != len(mat):
            raise VectorIndexError(f"{len(ids)} ids for {len(mat)} vectors")
        if len(ids):
            self._index.add_with_ids(mat, ids)

    def remove(self, ids: Iterable[int]) -> int:
        """Remove ids; returns how many were present."""
        import faiss

        arr = np.fromiter(ids, dtype=np.int64)
        if arr.size == 0:
            return 0
        try:
            return int(self._index.remove_ids(faiss.IDSelectorBatch(arr)))
        except RuntimeError as exc:
            raise VectorIndexError(
                f"index type {self.factory!r} cannot remove vectors ({str(exc).strip().splitlines()[-1]}); "
                "it is rebuilt from the store instead"
            ) from exc

    # -- query ----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, ids) per query row; missing slots are dropped by the caller (id -1).

        ``allowed``: search only among these ids (a faiss id selector inside the search, so a
        selective filter still gets its true top ``k``).
        """
        if k < 1:
            raise ValueError("k must be at least 1")
        mat = _as_matrix(queries, self.dim)
        if self.ntotal == 0 or (allowed is not None and len(allowed) == 0):
            n = len(mat)
            return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        if allowed is None:
            return self._index.search(mat, min(k, self.ntotal))
        selector = _selector(np.ascontiguousarray(allowed, dtype=np.int64))
        return self._index.search(mat, min(k, self.ntotal, len(allowed)), params=self._params(selector))

    def _params(self, selector):
        import faiss

        inner = _inner(self._index)
        if isinstance(inner, faiss.IndexIVF):
            return faiss.SearchParametersIVF(sel=selector, nprobe=inner.nprobe)
        if isinstance(inner, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(sel=selector, efSearch=inner.hnsw.efSearch)
        return faiss.SearchParameters(sel=selector)

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: Path) -> str:
        """Write atomically (see :func:`write_index`); returns the file's SHA-256, for :meth:`load` to check."""
        return write_index(self._index, path)

    @property
    def untrained_fallback(self) -> bool:
        """Searching exactly because the factory's training failed (too few vectors); a rebuild trains it."""
        return self.note.startswith(FALLBACK_NOTE)

    @property
    def nprobe(self) -> int | None:
        import faiss

        inner = _inner(self._index)
        return int(inner.nprobe) if isinstance(inner, faiss.IndexIVF) else None

    @classmethod
    def load(cls, path: Path, factory: str, dim: int, note: str = "", checksum: str | None = None) -> "VectorIndex":
        """Read an index file; with ``checksum`` (what :meth:`save` returned), only if the file still
        has it: faiss's reader is native code, so a file the engine did not write is never parsed."""
        import faiss

        if checksum is not None:
            verify_checksum(Path(path), checksum)
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise VectorIndexError(f"cannot read the vector index {path}: {exc}") from exc
        own_ids = isinstance(index, faiss.IndexIVF)  # read_index returns the concrete type
        if not (own_ids or isinstance(index, faiss.IndexIDMap2)) or index.d != dim:
            raise VectorIndexError(f"{path} is not an id-mapped index of dimension {dim}")
        if not own_ids and isinstance(_inner(index), faiss.IndexIVF):  # the layout that cannot remove
            raise VectorIndexError(f"{path} is an inverted file in an id map, which cannot remove vectors")
        return cls(index, factory, dim, note=note)


def write_index(index, path: Path) -> str:
    """Write a faiss index atomically (see :func:`write_atomic`); returns the file's SHA-256, for
    :meth:`VectorIndex.load` to check.

    The bytes go through Python's own file object: faiss's file writer reports a failed final
    flush (a full disk, a file size limit) only on stderr when it closes the file, so a
    truncated index would have been put in place with the checksum of its truncated bytes."""
    import faiss

    return write_atomic(path, lambda sink: faiss.write_index(index, faiss.PyCallbackIOWriter(sink)))


def write_atomic(path: Path, produce: Callable[[Callable[[bytes], None]], None]) -> str:
    """Write the bytes ``produce`` hands its sink to ``path`` atomically (a temp file in the same
    folder, fsync, ``os.replace``, fsync the folder); returns their SHA-256. On any error the
    previous file stays as it was and the temp file is removed; temp files left by a process that
    was killed mid-save are removed by the next save."""
    path = Path(path)
    digest = hashlib.sha256()
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}.", suffix=".tmp", dir=path.parent)
        written = 0
        with os.fdopen(fd, "wb") as fh:
            def sink(chunk: bytes) -> None:
                nonlocal written
                fh.write(chunk)
                digest.update(chunk)
                written += len(chunk)

            produce(sink)
            fh.flush()
            os.fsync(fh.fileno())
        if os.path.getsize(tmp) != written:
            raise OSError(f"{written} bytes written but the file holds {os.path.getsize(tmp)}")
        os.replace(tmp, path)
        tmp = None
    except (RuntimeError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[-1]
        raise VectorIndexError(f"cannot save the vector index to {path}: {reason}; "
                               "the previous index file is unchanged") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _fsync_dir(path.parent)
    return digest.hexdigest()


def verify_checksum(path: Path, want: str) -> None:
    """Raise unless ``path`` has the SHA-256 ``want`` recorded when the engine wrote it (before any
    native reader sees the file)."""
    try:
        found = file_checksum(path)
    except OSError as exc:
        raise VectorIndexError(f"cannot read the vector index file {path}: {exc}") from exc
    if found != want:
        raise IndexChecksumError(f"{path} does not have the checksum recorded when the engine saved it "
                                 "(a save cut short by a crash, or a file changed outside the engine); "
                                 "it is not read")


def file_checksum(path: Path) -> str:
    """SHA-256 of a file, hex, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def temp_files(path: Path) -> list[Path]:
    """The temp files :meth:`VectorIndex.save` writes next to ``path`` (left behind only by a kill)."""
    return sorted(path.parent.glob(f"{glob.escape(_temp_prefix(path))}*.tmp"))


def remove_stale_temps(path: Path) -> int:
    """Remove the temp files of saves whose process is gone (killed mid-save); returns how many.

    A temp file is named after its writer's pid; one whose pid is alive on this machine is left
    alone (it may be another process's save in progress)."""
    removed = 0
    for tmp in temp_files(path):
        pid = tmp.name[len(_temp_prefix(path)):].split(".", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists (another user's process)
    return True


def _training_sample(mat: np.ndarray, factory: str, per_list: int = 64, seed: int = 0) -> np.ndarray:
    """At most ``per_list`` points per inverted list (faiss wants >= 39): k-means cost stays bounded."""
    nlist = _ivf_lists(factory)
    if nlist is None or len(mat) <= nlist * per_list:
        return mat
    rows = np.sort(np.random.default_rng(seed).choice(len(mat), size=nlist * per_list, replace=False))
    return mat[rows]


def _describe(index, factory: str) -> str:
    """The concrete factory of a loaded index (``auto`` saved it as Flat or IVF{n},SQfp16)."""
    if factory != AUTO:
        return factory
    import faiss

    inner = _inner(index)
    if isinstance(inner, faiss.IndexIVF):
        return f"IVF{inner.nlist},SQfp16"
    return "Flat"


def _selector(ids: np.ndarray):
    """An id selector that keeps its id array alive (faiss holds only a pointer)."""
    import faiss

    selector = faiss.IDSelectorBatch(ids)
    selector.ids_ref = ids
    return selector


def _as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    mat = np.ascontiguousarray(vectors, dtype=np.float32)
    if mat.ndim == 1:
        mat = mat.reshape(1, -1)
    if mat.ndim != 2 or (mat.shape[0] and mat.shape[1] != dim):
        raise VectorIndexError(f"expected vectors of shape (n, {dim}), got {mat.shape}")
    return mat.reshape(-1, dim)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not support fsync on directories
    finally:
        os.close(fd)
