"""Inverted files built and served on disk, for collections too large to build in memory.

A factory string with the ``ondisk:`` prefix (``ondisk:IVF65536,PQ32``; ``searchengine build-index``
records it) is built this way:

1. train the coarse quantizer and the codec on a sample of the stored vectors;
2. stream every stored vector once, in id order, into shards of ``shard_size`` vectors: each shard is
   a copy of the trained empty index filled with ``add_with_ids`` (ids = SQL keys) and written to a
   temp folder next to the index;
3. merge the shards' inverted lists into one ``.ivfdata`` file (as faiss ``merge_ondisk``) and write the
   small index file that refers to it (quantizer, codebooks, list offsets);
4. serve it memory-mapped, read-only: resident memory is the quantizer and codebooks plus the pages
   of the lists that queries touch.

During the streaming pass the exact top 10 of 200 sampled stored vectors is kept as well, so
``nprobe`` is calibrated like ``auto``'s (recall@10 against exact search) without a second pass.

The lists on disk are never modified: vectors added after the build go to a small in-memory exact
index (the *delta*, saved next to it as ``<index>.delta``) searched alongside, and removed or
re-encoded rows are hidden from the lists by an id selector inside the search (their ids saved as
``<index>.hidden``). Build again (``build-index``/``rebuild-index``) when the delta grows large.

The store records one string for the files (:class:`OnDiskRecord`): the SHA-256 of the index file,
the name and SHA-256 of its ``.ivfdata``, the SHA-256 of the delta and of the hidden ids. Every file
is checked before faiss reads it; the ``.ivfdata`` once per file version (:func:`verify_data_file`).
Each build writes a new ``.ivfdata`` under a new name, and the index file is replaced atomically, so
an interrupted build leaves the previous index whole.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from .errors import ConfigError, IndexChecksumError, VectorIndexError
from .vectors import (
    AUTO_TARGET_RECALL,
    RERANK_FACTOR,
    VectorIndex,
    _alive,
    _as_matrix,
    _fsync_dir,
    _selector,
    file_checksum,
    is_lossy,
    verify_checksum,
    write_atomic,
    write_index,
)

if TYPE_CHECKING:  # pragma: no cover
    from .store import Store, VectorKind

__all__ = ["ONDISK_PREFIX", "OnDiskIndex", "TooFewVectorsError", "OnDiskRecord", "BuildOptions", "BuildStats", "is_ondisk", "base_factory",
           "build_ondisk", "build_from_store", "remove_unused_files"]

ONDISK_PREFIX = "ondisk:"
_CALIBRATION_QUERIES = 200


class TooFewVectorsError(VectorIndexError):
    """Too few vectors to train the inverted file and its codes (the engine searches exactly until then)."""


def is_ondisk(factory: str) -> bool:
    return factory.replace(" ", "").startswith(ONDISK_PREFIX)


def base_factory(factory: str) -> str:
    """The faiss factory of an ``ondisk:`` string, checked to build an inverted file."""
    import faiss

    text = factory.replace(" ", "")
    text = text[len(ONDISK_PREFIX):] if text.startswith(ONDISK_PREFIX) else text
    try:
        probe = faiss.index_factory(8 if "PQ" not in text else 64, text, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(f"invalid faiss index factory {text!r}: {str(exc).strip().splitlines()[-1]}") from exc
    if not isinstance(probe, faiss.IndexIVF) or isinstance(probe, faiss.IndexIVFPQR):
        raise ConfigError(f"an on-disk index must be an inverted file such as IVF65536,PQ32, not {text!r}")
    return text


@dataclass(frozen=True)
class OnDiskRecord:
    """What the store records for an on-disk index, as one string in its checksum column."""

    index: str  # SHA-256 of the index file
    data_name: str  # the .ivfdata file, in the index file's folder
    data: str  # its SHA-256
    delta: str  # SHA-256 of the delta file
    hidden: str = ""  # SHA-256 of the hidden-ids file ("": none saved, as in records written before they were)

    def __str__(self) -> str:
        text = f"{ONDISK_PREFIX}{self.index}:{self.data_name}:{self.data}:{self.delta}"
        return text + f":{self.hidden}" if self.hidden else text

    @classmethod
    def parse(cls, text: str | None) -> "OnDiskRecord | None":
        if not text or not text.startswith(ONDISK_PREFIX):
            return None
        parts = text[len(ONDISK_PREFIX):].split(":")
        if len(parts) not in (4, 5) or "/" in parts[1] or not parts[1].endswith(".ivfdata"):
            raise IndexChecksumError(f"malformed on-disk index record {text!r}")
        return cls(*parts)


@dataclass(frozen=True)
class BuildOptions:
    #: training vectors (default: 50 per list, at least 20,000, at most the collection)
    sample: int | None = None
    #: vectors per shard file before the merge
    shard_size: int = 1_000_000
    seed: int = 0


@dataclass
class BuildStats:
    vectors: int = 0
    sample: int = 0
    shards: int = 0
    train_s: float = 0.0
    add_s: float = 0.0
    merge_s: float = 0.0
    tune_s: float = 0.0
    data_bytes: int = 0
    index_bytes: int = 0
    recall_at_10: float = 0.0
    nprobe: int = 0


def _delta_path(path: Path) -> Path:
    return path.with_name(path.name + ".delta")


def _hidden_path(path: Path) -> Path:
    """The ids of the lists' vectors that no longer count (removed, or replaced in the delta)."""
    return path.with_name(path.name + ".hidden")


class OnDiskIndex(VectorIndex):
    """A memory-mapped inverted file (read-only) plus an in-memory delta of later changes."""

    def __init__(self, base, factory: str, dim: int, path: Path, record: OnDiskRecord, delta: VectorIndex,
                 note: str = "", hidden: np.ndarray | None = None, base_ids: np.ndarray | None = None) -> None:
        super().__init__(base, factory, dim, note=note, chosen=base_factory(factory))
        self.path = Path(path)
        self._record = record
        self._delta = delta
        self._base_ids = base_ids  # the lists' ids, when already read (sorted)
        if hidden is None:  # none saved (a new build, or a record from before they were): the delta's
            hidden = np.intersect1d(self.base_ids(), delta.ids()) if delta.ntotal else np.zeros(0, np.int64)
        self._hidden = hidden

    # -- what it holds ----------------------------------------------------------------------
    def base_ids(self) -> np.ndarray:
        """The ids in the lists on disk, sorted (read once)."""
        if self._base_ids is None:
            self._base_ids = VectorIndex.ids(self)
        return self._base_ids

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal) - int(self._hidden.size) + self._delta.ntotal

    @property
    def delta_size(self) -> int:
        return self._delta.ntotal

    @property
    def hidden(self) -> int:
        return int(self._hidden.size)

    @property
    def data_path(self) -> Path:
        return self.path.parent / self._record.data_name

    @property
    def storage(self) -> str:
        import faiss

        codes = int(self._index.code_size)
        size = self.data_path.stat().st_size if self.data_path.exists() else 0
        return (f"on disk, memory-mapped: {self._index.nlist:,} lists, {codes} bytes a code (+8 for the id), "
                f"{self._index.ntotal:,} vectors in {self._record.data_name} ({size / 1e6:,.1f} MB); "
                f"{self._delta.ntotal:,} added since the build (in memory), {self._hidden.size:,} hidden"
                + ("" if isinstance(faiss.downcast_InvertedLists(self._index.invlists), faiss.OnDiskInvertedLists)
                   else " (lists in memory)"))

    def ids(self) -> np.ndarray:
        return np.union1d(np.setdiff1d(self.base_ids(), self._hidden, assume_unique=True), self._delta.ids())

    # -- mutation: the delta only -----------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._delta.add(ids, vectors)
        self._hide(ids)  # a re-added id's old vector in the lists no longer counts

    def remove(self, ids: Iterable[int]) -> int:
        arr = np.unique(np.fromiter(ids, dtype=np.int64))
        if arr.size == 0:
            return 0
        from_delta = self._delta.remove(arr.tolist())
        return from_delta + self._hide(arr)

    def _hide(self, ids: np.ndarray) -> int:
        new = np.setdiff1d(np.intersect1d(self.base_ids(), ids), self._hidden, assume_unique=True)
        self._hidden = np.union1d(self._hidden, new)
        return int(new.size)

    # -- query ------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if k < 1:
            raise ValueError("k must be at least 1")
        mat = _as_matrix(queries, self.dim)
        parts = []
        if self._delta.ntotal:
            parts.append(self._delta.search(mat, k, allowed))
        base = self._index
        sel = None
        if allowed is not None:
            sel = _selector(np.setdiff1d(np.asarray(allowed, np.int64), self._hidden))
            usable = int(sel.ids_ref.size)
        else:
            usable = int(base.ntotal - self._hidden.size)
            if self._hidden.size:
                inner = _selector(self._hidden)
                sel = faiss.IDSelectorNot(inner)
                sel.inner_ref = inner
        if usable > 0:
            params = faiss.SearchParametersIVF(sel=sel, nprobe=base.nprobe) if sel is not None else None
            parts.append(base.search(mat, min(k, usable), params=params))
        if not parts:
            return np.zeros((len(mat), 0), np.float32), np.zeros((len(mat), 0), np.int64)
        scores = np.concatenate([p[0] for p in parts], axis=1)
        found = np.concatenate([p[1] for p in parts], axis=1)
        scores = np.where(found < 0, -np.inf, scores)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1).astype(np.float32), np.take_along_axis(found, order, 1)

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: Path) -> str:
        """Write the delta and the hidden ids (the lists on disk never change); returns the record to
        keep in the store. Keeping the hidden ids lets an open count the index without reading the
        lists' ids (100M of them at that scale)."""
        if Path(path) != self.path:
            raise VectorIndexError(f"an on-disk index lives at {self.path}; it cannot be saved to {path}")
        ids = np.ascontiguousarray(self._hidden, dtype="<i8")
        hidden = write_atomic(_hidden_path(self.path), lambda sink: sink(ids.tobytes()))
        delta = self._delta.save(_delta_path(self.path))
        self._record = OnDiskRecord(self._record.index, self._record.data_name, self._record.data, delta, hidden)
        return str(self._record)

    @classmethod
    def load(cls, path: Path, factory: str, dim: int, note: str = "", checksum: str | None = None,  # type: ignore[override]
             reuse: "VectorIndex | None" = None) -> "OnDiskIndex":
        """Open after checking its files (index, lists, delta, hidden ids) against ``checksum`` (an :class:`OnDiskRecord`).

        ``reuse``: an on-disk index already open with the same lists (a reader picking up a new
        delta); its mapping is shared instead of hashing and mapping the data file again."""

        path = Path(path)
        record = OnDiskRecord.parse(checksum)
        if record is None:
            raise IndexChecksumError(f"no on-disk index record for {path}")
        delta = VectorIndex.load(_delta_path(path), "Flat", dim, checksum=record.delta)
        hidden = None
        if record.hidden:
            verify_checksum(_hidden_path(path), record.hidden)
            hidden = np.fromfile(_hidden_path(path), dtype="<i8").astype(np.int64)
        same = (isinstance(reuse, OnDiskIndex) and reuse.path == path
                and (reuse._record.index, reuse._record.data_name, reuse._record.data)
                == (record.index, record.data_name, record.data))
        if same:
            assert isinstance(reuse, OnDiskIndex)
            return cls(reuse._index, factory, dim, path, record, delta, note, hidden, reuse._base_ids)
        verify_checksum(path, record.index)  # small, and what faiss parses: every time
        verify_data_file(path.parent / record.data_name, record.data)
        return cls(_read_base(path, dim), factory, dim, path, record, delta, note, hidden)


VERIFIED_SUFFIX = ".verified"


def _file_signature(file: Path, want: str) -> str:
    st = os.stat(file)
    return f"{want}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_dev}:{st.st_ino}"


def verify_data_file(file: Path, want: str) -> None:
    """Check the lists file against its recorded SHA-256, reading it whole once per file version.

    At 100M vectors the lists are gigabytes (7.2 GB with PQ64: about 13 s to hash here), so a
    check that passed is remembered in ``<file>.verified``: the checksum with the file's size,
    mtime, ctime (which utime cannot set), device and inode. While all of them are unchanged
    the file is not read again; any change, or no note (a read-only folder), hashes it again.
    The lists are only ever mapped and read as codes and ids, never parsed (the index file is,
    and it is hashed on every open)."""
    note = file.with_name(file.name + VERIFIED_SUFFIX)
    signature = None
    try:
        signature = _file_signature(file, want)
        if note.read_text() == signature:
            return
    except OSError:
        pass
    verify_checksum(file, want)
    tmp = note.with_name(f".{note.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        if signature is None or _file_signature(file, want) != signature:
            return  # changed while it was hashed: nothing to remember
        tmp.write_text(signature)
        os.replace(tmp, note)
    except OSError:  # a folder the reader may not write: it hashes on each open
        with contextlib.suppress(OSError):
            tmp.unlink()


def _read_base(path: Path, dim: int):
    """The index file, its lists mapped read-only from the ``.ivfdata`` in the same folder."""
    import faiss

    try:
        with _native_stdout_to_stderr():  # faiss says so on stdout when the folder was moved
            base = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as exc:
        raise VectorIndexError(f"cannot read the on-disk index {path}: {str(exc).strip().splitlines()[-1]}") from exc
    if not isinstance(base, faiss.IndexIVF) or base.d != dim or not isinstance(
            faiss.downcast_InvertedLists(base.invlists), faiss.OnDiskInvertedLists):
        raise VectorIndexError(f"{path} is not an on-disk inverted file of dimension {dim}")
    return base


# -- building ------------------------------------------------------------------------------
class _ExactTop:
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


def _recall(index, queries: np.ndarray, query_ids: np.ndarray, truth: _ExactTop, k: int = 10) -> float:
    """Recall@k of ``index`` for stored vectors used as queries, each one's own id left out; for a
    lossy index, of the engine's exact re-rank: the true top k among ``RERANK_FACTOR * k`` candidates."""
    if not len(queries):
        return 1.0
    _, found = index.search(queries, k * (RERANK_FACTOR if is_lossy(index) else 1) + 1)
    order = np.argsort(-truth.scores, axis=1)
    recalls = []
    for qid, f, t in zip(query_ids, found, np.take_along_axis(truth.ids, order, 1)):
        want = set([int(i) for i in t if i != qid and i >= 0][:k])
        recalls.append(len((set(f.tolist()) - {int(qid)}) & want) / max(len(want), 1))
    return float(np.mean(recalls))


def _tune(index, queries: np.ndarray, query_ids: np.ndarray, truth: _ExactTop,
          target: float = AUTO_TARGET_RECALL) -> tuple[int, float]:
    """``nprobe`` doubled from nlist/64 (at least 8) until recall@10 reaches ``target``, or stops
    improving (the codes' quantisation caps it: more lists would only cost time)."""
    nprobe = min(index.nlist, max(8, index.nlist // 64))
    best = (nprobe, -1.0)
    while True:
        index.nprobe = nprobe
        recall = _recall(index, queries, query_ids, truth)
        if recall < best[1] + 0.005:
            index.nprobe = best[0]
            return best
        best = (nprobe, recall)
        if recall >= target or nprobe >= index.nlist:
            return best
        nprobe = min(nprobe * 2, index.nlist)


def build_ondisk(factory: str, dim: int, path: Path, sample: np.ndarray, sample_ids: np.ndarray,
                 chunks: Iterable[tuple[np.ndarray, np.ndarray]], options: BuildOptions = BuildOptions(),
                 stats: BuildStats | None = None) -> OnDiskIndex:
    """Train on ``sample`` (with ``sample_ids``, the calibration queries' own ids), stream ``chunks`` of
    (ids, vectors) into shards, merge them into a new ``.ivfdata`` next to ``path`` and replace
    ``path`` atomically. The returned index is open memory-mapped with an empty delta; its
    :meth:`~OnDiskIndex.save` writes the delta and gives the record for the store.

    Raises :class:`VectorIndexError` (``path`` and its data left as they were) if any step fails."""
    import faiss

    stats = stats if stats is not None else BuildStats()
    inner = base_factory(factory)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(path)
    work = path.parent / f".{path.name}.{os.getpid()}.build"
    data = path.parent / f"{path.name}.{secrets.token_hex(8)}.ivfdata"
    done = False
    try:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        started = time.perf_counter()
        index = faiss.index_factory(dim, inner, faiss.METRIC_INNER_PRODUCT)
        if isinstance(index, faiss.IndexIVFPQ):
            index.do_polysemous_training = False  # only for Hamming-filtered search, which is not used: 10-30x slower
        try:
            index.train(_as_matrix(sample, dim))
        except RuntimeError as exc:
            raise TooFewVectorsError(f"cannot train {inner} on {len(sample)} vectors: "
                                   f"{str(exc).strip().splitlines()[-1]}") from exc
        stats.sample, stats.train_s = len(sample), time.perf_counter() - started
        trained = faiss.serialize_index(index)
        rows = np.random.default_rng(options.seed).choice(len(sample), min(_CALIBRATION_QUERIES, len(sample)),
                                                          replace=False)
        queries, query_ids = _as_matrix(sample, dim)[rows], np.asarray(sample_ids, np.int64)[rows]
        truth = _ExactTop(queries, 11)
        started = time.perf_counter()
        shards = [str(s) for s in _write_shards(trained, dim, chunks, work, options.shard_size, truth, stats)]
        stats.add_s = time.perf_counter() - started
        started = time.perf_counter()
        merged = faiss.deserialize_index(trained)
        _merge(merged, shards, data)
        _fsync_file(data)
        stats.merge_s = time.perf_counter() - started
        started = time.perf_counter()
        stats.nprobe, stats.recall_at_10 = _tune(merged, queries, query_ids, truth)
        stats.tune_s = time.perf_counter() - started
        index_sha = write_index(merged, path)
        data_sha = file_checksum(data)
        stats.data_bytes, stats.index_bytes = data.stat().st_size, path.stat().st_size
        lossy = is_lossy(merged)
        del merged
        note = (f"ondisk: {inner} built from {stats.vectors:,} vectors ({stats.shards} shards, trained on "
                f"{stats.sample:,}), nprobe {stats.nprobe}: recall@10 {stats.recall_at_10:.3f} of exact on "
                f"{len(queries)} stored vectors"
                + (f" after the exact re-rank of {RERANK_FACTOR * 10} candidates" if lossy else ""))
        record = OnDiskRecord(index_sha, data.name, data_sha, "")  # the delta's checksum comes with its save
        result = OnDiskIndex(_read_base(path, dim), ONDISK_PREFIX + inner, dim, path, record,
                             VectorIndex.create("Flat", dim), note)
        done = True
        return result
    except (RuntimeError, OSError) as exc:
        raise VectorIndexError(f"cannot build the on-disk index {path}: {str(exc).strip().splitlines()[-1]}; "
                               "the previous index is unchanged") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not done:
            with contextlib.suppress(OSError):
                data.unlink()


def _write_shards(trained: np.ndarray, dim: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]], work: Path,
                  shard_size: int, truth: _ExactTop, stats: BuildStats) -> Iterator[Path]:
    """Fill copies of the trained empty index with ``shard_size`` vectors each and write them to ``work``."""
    import faiss

    shard_size = max(1, shard_size)
    shard = None
    for ids, vecs in chunks:
        ids, vecs = np.ascontiguousarray(ids, np.int64), _as_matrix(vecs, dim)
        truth.update(ids, vecs)
        pos = 0
        while pos < len(ids):
            if shard is None:
                shard = faiss.deserialize_index(trained)
            end = pos + shard_size - int(shard.ntotal)
            shard.add_with_ids(vecs[pos:end], ids[pos:end])
            stats.vectors += len(ids[pos:end])
            pos = end
            if shard.ntotal >= shard_size:
                yield _write_shard(shard, work, stats)
                shard = None
    if shard is not None and shard.ntotal:
        yield _write_shard(shard, work, stats)


def _merge(index, shards: list[str], data: Path) -> None:
    """faiss.contrib.ondisk.merge_ondisk, except that the shards' mapped lists are released afterwards
    (merge_ondisk leaves them mapped for the life of the process, which also keeps the deleted shard
    files' disk space in use)."""
    import faiss

    parts = [faiss.read_index(name, faiss.IO_FLAG_MMAP) for name in shards]
    lists = faiss.InvertedListsPtrVector()
    for part in parts:
        lists.push_back(faiss.extract_index_ivf(part).invlists)
    ivf = faiss.extract_index_ivf(index)
    ondisk_lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(data))
    with _native_stdout_to_stderr():
        ntotal = ondisk_lists.merge_from_multiple(lists.data(), lists.size(), False)
    index.ntotal = ivf.ntotal = ntotal
    ivf.replace_invlists(ondisk_lists, True)
    ondisk_lists.this.disown()
    del lists, parts  # each shard index owns its lists: unmapped here


def _write_shard(shard, work: Path, stats: BuildStats) -> Path:
    import faiss

    out = work / f"shard{stats.shards:05d}.index"
    faiss.write_index(shard, str(out))
    stats.shards += 1
    return out


def build_from_store(store: "Store", collection_id: int, kind: "VectorKind", factory: str, dim: int, path: Path,
                     options: BuildOptions = BuildOptions(), stats: BuildStats | None = None) -> OnDiskIndex:
    """:func:`build_ondisk` over a collection's stored vectors: a random sample (by id) to train on, then
    every row in id order."""
    import faiss

    nlist = faiss.extract_index_ivf(faiss.index_factory(dim, base_factory(factory))).nlist
    live = store.live_ids(collection_id, kind)
    want = options.sample or max(50 * nlist, 20_000)
    rows = np.sort(np.random.default_rng(options.seed).choice(len(live), min(want, len(live)), replace=False))
    parts = [store.live_vectors(collection_id, live[rows[s : s + 8192]].tolist(), kind)
             for s in range(0, len(rows), 8192)]
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    vecs = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, dim), np.float32)
    return build_ondisk(factory, dim, path, vecs, ids, store.iter_vectors(collection_id, kind=kind), options, stats)


# -- files ---------------------------------------------------------------------------------
def remove_unused_files(path: Path, keep: OnDiskIndex | VectorIndex | None) -> int:
    """Remove ``.ivfdata`` files of ``path`` other than the one ``keep`` uses (earlier builds, builds cut
    short), and the delta when ``keep`` is not on disk. A process that still maps a removed file
    keeps reading it (the file goes when its last mapping does)."""
    keep_name = keep._record.data_name if isinstance(keep, OnDiskIndex) else None
    removed = 0
    stale = [p for p in path.parent.glob(f"{path.name}.*.ivfdata") if p.name != keep_name]
    if keep_name is None:
        stale += [_delta_path(path), _hidden_path(path)]
    for old in stale:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
            removed += 1
    for note in path.parent.glob(f"{path.name}.*.ivfdata{VERIFIED_SUFFIX}"):  # notes of lists gone
        if not note.with_name(note.name[: -len(VERIFIED_SUFFIX)]).exists():
            with contextlib.suppress(FileNotFoundError):
                note.unlink()
    for tmp in path.parent.glob(f".{path.name}.*.ivfdata{VERIFIED_SUFFIX}.*.tmp"):  # a note's writer killed
        pid = tmp.name.rsplit(".", 3)[-3]
        if not (pid.isdigit() and _alive(int(pid))):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return removed


def _remove_stale_builds(path: Path) -> None:
    for work in path.parent.glob(f".{path.name}.*.build"):
        pid = work.name[len(path.name) + 2 :].split(".", 1)[0]
        if not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(work, ignore_errors=True)


def _fsync_file(file: Path) -> None:
    with open(file, "rb") as fh:
        os.fsync(fh.fileno())
    _fsync_dir(file.parent)


@contextlib.contextmanager
def _native_stdout_to_stderr() -> Iterator[None]:
    """faiss's native code prints progress on stdout, which would corrupt ``--json`` output."""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)

