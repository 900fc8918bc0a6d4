"""The build of an on-disk inverted file (a factory string with the ``ondisk:`` prefix, such as
``ondisk:IVF65536,PQ32``; ``searchengine build-index`` records it):

1. train the coarse quantizer and the codec on a sample of the stored vectors;
2. stream every stored vector once, in id order, into shards of ``shard_size`` vectors: each shard is
   a copy of the trained empty index filled with ``add_with_ids`` (ids = SQL keys) and written to a
   temp folder next to the index;
3. merge the shards' inverted lists into one ``.ivfdata`` file (as faiss ``merge_ondisk``) and write the
   small index file that refers to it (quantizer, codebooks, list offsets);
4. open it memory-mapped (:class:`~searchengine.index.ondisk.OnDiskIndex`).

During the streaming pass the exact top 10 of 200 sampled stored vectors is kept as well, so
``nprobe`` is calibrated like ``auto``'s (:mod:`searchengine.index.calibrate`) without a second pass.
Each build writes a new ``.ivfdata`` under a new name, and the index file is replaced atomically, so
an interrupted build leaves the previous index whole.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from .._fs import file_checksum, fsync_file, pid_alive
from ..errors import VectorIndexError
from .base import RERANK_FACTOR, as_matrix, faiss_reason, is_lossy, native_stdout_to_stderr, write_index
from .calibrate import ExactTop, calibration_rows, tune_nprobe
from .factory import ONDISK_PREFIX, base_factory
from .memory import VectorIndex
from .ondisk import OnDiskIndex, OnDiskRecord, read_base

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Store, VectorKind

__all__ = ["TooFewVectorsError", "BuildOptions", "BuildStats", "build_ondisk", "build_from_store"]

#: a doubling of nprobe that gains less recall than this stops the calibration (the codes cap it)
_MIN_GAIN = 0.005


class TooFewVectorsError(VectorIndexError):
    """Too few vectors to train the inverted file and its codes (the engine searches exactly until then)."""


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


def build_ondisk(factory: str, dim: int, path: Path, sample: np.ndarray, sample_ids: np.ndarray,
                 chunks: Iterable[tuple[np.ndarray, np.ndarray]], options: BuildOptions = BuildOptions(),
                 stats: BuildStats | None = None) -> OnDiskIndex:
    """Train on ``sample`` (with ``sample_ids``, the calibration queries' own ids), stream ``chunks`` of
    (ids, vectors) into shards, merge them into a new ``.ivfdata`` next to ``path`` and replace
    ``path`` atomically. The returned index is open memory-mapped with an empty delta; its
    :meth:`~OnDiskIndex.save` writes the delta and gives the record for the store.

    Raises :class:`VectorIndexError` (``path`` and its data left as they were) if any step fails."""
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
        trained = _train(inner, dim, sample, stats)
        rows = calibration_rows(len(sample), options.seed)
        queries, query_ids = as_matrix(sample, dim)[rows], np.asarray(sample_ids, np.int64)[rows]
        truth = ExactTop(queries, 11)
        started = time.perf_counter()
        shards = [str(s) for s in _write_shards(trained, dim, chunks, work, options.shard_size, truth, stats)]
        stats.add_s = time.perf_counter() - started
        merged = _merge(trained, shards, data, stats)
        started = time.perf_counter()
        stats.nprobe, stats.recall_at_10 = tune_nprobe(merged, queries, query_ids, truth.ranked(), min_gain=_MIN_GAIN)
        stats.tune_s = time.perf_counter() - started
        index_sha = write_index(merged, path)
        data_sha = file_checksum(data)
        stats.data_bytes, stats.index_bytes = data.stat().st_size, path.stat().st_size
        note = _note(inner, stats, len(queries), is_lossy(merged))
        del merged
        record = OnDiskRecord(index_sha, data.name, data_sha, "")  # the delta's checksum comes with its save
        result = OnDiskIndex(read_base(path, dim), ONDISK_PREFIX + inner, dim, path, record,
                             VectorIndex.create("Flat", dim), note)
        done = True
        return result
    except (RuntimeError, OSError) as exc:
        raise VectorIndexError(f"cannot build the on-disk index {path}: {faiss_reason(exc)}; "
                               "the previous index is unchanged") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not done:
            with contextlib.suppress(OSError):
                data.unlink()


def _train(inner: str, dim: int, sample: np.ndarray, stats: BuildStats) -> Any:
    """The trained empty index, serialized (each shard and the merge start from a copy)."""
    import faiss

    started = time.perf_counter()
    index = faiss.index_factory(dim, inner, faiss.METRIC_INNER_PRODUCT)
    if isinstance(index, faiss.IndexIVFPQ):
        index.do_polysemous_training = False  # only for Hamming-filtered search, which is not used: 10-30x slower
    try:
        index.train(as_matrix(sample, dim))
    except RuntimeError as exc:
        raise TooFewVectorsError(f"cannot train {inner} on {len(sample)} vectors: {faiss_reason(exc)}") from exc
    stats.sample, stats.train_s = len(sample), time.perf_counter() - started
    return faiss.serialize_index(index)


def _note(inner: str, stats: BuildStats, queries: int, lossy: bool) -> str:
    return (f"ondisk: {inner} built from {stats.vectors:,} vectors ({stats.shards} shards, trained on "
            f"{stats.sample:,}), nprobe {stats.nprobe}: recall@10 {stats.recall_at_10:.3f} of exact on "
            f"{queries} stored vectors"
            + (f" after the exact re-rank of {RERANK_FACTOR * 10} candidates" if lossy else ""))


def _write_shards(trained: np.ndarray, dim: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]], work: Path,
                  shard_size: int, truth: ExactTop, stats: BuildStats) -> Iterator[Path]:
    """Fill copies of the trained empty index with ``shard_size`` vectors each and write them to ``work``."""
    import faiss

    shard_size = max(1, shard_size)
    shard = None
    for ids, vecs in chunks:
        ids, vecs = np.ascontiguousarray(ids, np.int64), as_matrix(vecs, dim)
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


def _merge(trained: Any, shards: list[str], data: Path, stats: BuildStats) -> Any:
    """A copy of the trained index whose lists are the shards' merged into ``data`` (fsynced).

    As faiss.contrib.ondisk.merge_ondisk, except that the shards' mapped lists are released afterwards
    (merge_ondisk leaves them mapped for the life of the process, which also keeps the deleted shard
    files' disk space in use)."""
    import faiss

    started = time.perf_counter()
    index = faiss.deserialize_index(trained)
    parts = [faiss.read_index(name, faiss.IO_FLAG_MMAP) for name in shards]
    lists = faiss.InvertedListsPtrVector()
    for part in parts:
        lists.push_back(faiss.extract_index_ivf(part).invlists)
    ivf = faiss.extract_index_ivf(index)
    ondisk_lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(data))
    with native_stdout_to_stderr():
        ntotal = ondisk_lists.merge_from_multiple(lists.data(), lists.size(), False)
    index.ntotal = ivf.ntotal = ntotal
    ivf.replace_invlists(ondisk_lists, True)
    ondisk_lists.this.disown()
    del lists, parts  # each shard index owns its lists: unmapped here
    fsync_file(data)
    stats.merge_s = time.perf_counter() - started
    return index


def _write_shard(shard: Any, work: Path, stats: BuildStats) -> Path:
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


def _remove_stale_builds(path: Path) -> None:
    """Remove the shard folders of builds whose process is gone (killed mid-build)."""
    for work in path.parent.glob(f".{path.name}.*.build"):
        pid = work.name[len(path.name) + 2 :].split(".", 1)[0]
        if not (pid.isdigit() and pid_alive(int(pid))):
            shutil.rmtree(work, ignore_errors=True)
