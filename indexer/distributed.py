"""Sharded indexing: decode and encode the files to index in shards, on this machine or on Ray.

The driver scans and diffs as the local path does, sorts the files to encode by path and cuts
them into fixed-size shards (``shard-00000``, ``shard-00001``...). One function,
:func:`encode_shard`, serves every runner: it decodes a shard's files with the engine's safe
decoder (:func:`indexer.pipeline.decode_all`: format allow-list, pixel cap, per-file errors) and
encodes the new contents with the collection's model. Each shard's result is a part file,
``<collection>/parts/<job>/shard-00012.npz`` (vectors, content hashes, per-file status; no
pickle), written to a temporary name and renamed into place, so a part that exists is complete.
As each part comes back the driver feeds it through the same :class:`indexer.writer.Writer` as
the local path and deletes it, so the store fills while the job runs and the driver never holds
more than the parts in flight (a 100M-image job's vectors alone are 200 GB). A failed job resumes
from the store: files written are unchanged on the next run, so only the shards that were running
are computed again. The job id is a digest of what the shards depend on (the files, the store's
known contents, the model and decode settings): a part of the same job that a stopped run left
unwritten is written on the next run instead of being computed again.

Runners: :class:`LocalRunner` (shards one after another in this process) and :class:`RayRunner`
(Ray Data: an actor pool that loads the model once per actor, on a GPU each when the cluster has
GPUs; parts come back to the driver, so the workers need no shared file system).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import socket
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

import numpy as np

from searchengine._fs import write_bytes_atomic
from searchengine.errors import ConfigError, ModelMismatchError
from searchengine.models import clip

from .pipeline import Decoded, DecodeOptions, decode_all
from .scan import FileEntry

if TYPE_CHECKING:
    from searchengine.engine import SearchEngine
    from searchengine.models.clip import ClipEncoder

__all__ = ["ShardJob", "Shard", "Part", "encode_shard", "make_shards", "write_part", "read_part", "part_bytes",
           "LocalRunner", "RayRunner", "PoolPlan", "plan_pool", "Sharded", "DEFAULT_SHARD_SIZE", "PART_FORMAT"]

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1024
PART_FORMAT = 1


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs to decode and encode shards like the driver would (picklable)."""

    model_spec: str
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None  # images per model call; None: 256 on a GPU, 32 on CPU
    #: the collection's recorded probe vectors (float32 bytes): a worker's weights must match them
    fingerprint: bytes = b""
    known_hashes: frozenset[str] = frozenset()
    own_hashes: dict[str, str] = field(default_factory=dict)
    max_pixels: int = 0
    ocr: bool = False
    ocr_hashes: frozenset[str] = frozenset()
    timeout: float = 0.0
    memory_limit: int = 0
    decode_workers: int = 0  # decode processes inside each shard task; 0: in the worker itself

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.model_spec, self.precision, hashlib.sha256(self.fingerprint).hexdigest(),
                     json.dumps(sorted(self.known_hashes)), json.dumps(sorted(self.own_hashes.items())),
                     str(self.max_pixels), str(self.ocr), json.dumps(sorted(self.ocr_hashes)), str(PART_FORMAT)):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()


@dataclass(frozen=True)
class Shard:
    name: str  # shard-00012: its place among the job's files sorted by path
    entries: tuple[FileEntry, ...]


@dataclass
class Part:
    """One shard's result: every file's status (pixels dropped) and the vectors it computed."""

    shard: str
    files: list[Decoded]
    vectors: dict[str, np.ndarray]  # content hash -> float32 vector, as the encoder returned it
    #: where it was computed: host, pid, the model's device and the GPUs the worker was given
    worker: dict = field(default_factory=dict)


def make_shards(entries: list[FileEntry], size: int = DEFAULT_SHARD_SIZE) -> list[Shard]:
    """Cut ``entries`` into shards of ``size`` files in path order (the same files give the same shards)."""
    if size < 1:
        raise ConfigError("the shard size must be at least 1")
    ordered = sorted(entries, key=lambda e: e.path)
    return [Shard(f"shard-{i // size:05d}", tuple(ordered[i : i + size])) for i in range(0, len(ordered), size)]


def load_shard_encoder(job: ShardJob) -> "ClipEncoder":
    """The job's model, checked against the collection's fingerprint (a worker with other weights fails)."""
    encoder = clip.load_encoder(job.model_spec, job.device, job.precision)
    if job.fingerprint:
        recorded = np.frombuffer(job.fingerprint, dtype="<f4").reshape(-1, encoder.dim)
        if not clip.probes_match(encoder.probe(), recorded):
            raise ModelMismatchError(f"the weights behind {job.model_spec!r} on this worker are not the ones "
                                     "the collection was built with")
    return encoder


def encode_shard(entries: tuple[FileEntry, ...] | list[FileEntry], job: ShardJob, name: str = "",
                 encoder: "ClipEncoder | None" = None) -> Part:
    """Decode ``entries`` with the engine's safe decoder and encode each new content once.

    Files the store already has the content of are hashed, not decoded or encoded (the writer
    reuses their vectors); unreadable files carry their error. Files come back in path order.
    """
    encoder = encoder or load_shard_encoder(job)
    options = DecodeOptions(pil_stage=encoder.pil_stage, known_hashes=job.known_hashes, own_hashes=job.own_hashes,
                            max_pixels=job.max_pixels, draft_size=encoder.image_size, ocr=job.ocr,
                            ocr_hashes=job.ocr_hashes, timeout=job.timeout, memory_limit=job.memory_limit)
    batch = job.batch_size or (256 if str(encoder.device).startswith("cuda") else 32)
    files: list[Decoded] = []
    vectors: dict[str, np.ndarray] = {}
    pending: dict[str, np.ndarray] = {}

    def flush() -> None:
        if pending:
            vectors.update(zip(pending, np.asarray(encoder.encode_pixels(list(pending.values())), dtype=np.float32)))
            pending.clear()

    with closing(decode_all(list(entries), options, job.decode_workers)) as decoded:
        for d in decoded:
            if d.pixels is not None and d.content_hash not in vectors and d.content_hash not in pending:
                pending[d.content_hash or ""] = d.pixels
                if len(pending) >= batch:
                    flush()
            files.append(replace(d, pixels=None))
    flush()
    files.sort(key=lambda d: d.entry.path)
    worker = dict(host=socket.gethostname(), pid=os.getpid(), device=str(encoder.device),
                  gpus=os.environ.get("CUDA_VISIBLE_DEVICES"))
    return Part(name, files, vectors, worker)


# -- part files: npz, no pickle -------------------------------------------------------------------
_FILE_FIELDS = ("content_hash", "width", "height", "error", "caption", "attributes", "sidecar_error", "taken_at",
                "ocr_text")


def part_bytes(part: Part) -> bytes:
    """``part`` as an .npz file: ``vectors`` (n, d) float32, ``hashes`` (n,) and ``files`` (JSON) as unicode."""
    files = [dict(path=d.entry.path, size=d.entry.size, mtime=d.entry.mtime, sidecar=d.entry.sidecar,
                  **{k: getattr(d, k) for k in _FILE_FIELDS}) for d in part.files]
    hashes = list(part.vectors)
    dim = next(iter(part.vectors.values())).shape[0] if part.vectors else 0
    vecs = np.stack([part.vectors[h] for h in hashes]).astype(np.float32) if hashes else np.zeros((0, dim), np.float32)
    buf = io.BytesIO()
    np.savez(buf, format=np.array(PART_FORMAT), shard=np.array(part.shard), vectors=vecs,
             hashes=np.array(hashes, dtype=np.str_), files=np.array(json.dumps(files)),
             worker=np.array(json.dumps(part.worker)))
    return buf.getvalue()


def write_part(path: Path, data: bytes) -> None:
    """Write a part file atomically: a temporary name in the same folder, fsync, rename."""
    write_bytes_atomic(path, data)


def read_part(path: Path | bytes) -> Part:
    """A part file, from its path or its bytes."""
    source = io.BytesIO(path) if isinstance(path, bytes) else path
    with np.load(source, allow_pickle=False) as npz:
        if int(npz["format"]) != PART_FORMAT:
            where = "a part" if isinstance(path, bytes) else str(path)
            raise ConfigError(f"{where} is a part file of another format ({int(npz['format'])})")
        vectors = dict(zip((str(h) for h in npz["hashes"]), npz["vectors"]))
        files = json.loads(str(npz["files"]))
        shard = str(npz["shard"])
        worker = json.loads(str(npz["worker"])) if "worker" in npz.files else {}
    decoded = [Decoded(FileEntry(f.pop("path"), f.pop("size"), f.pop("mtime"), f.pop("sidecar")), **f) for f in files]
    return Part(shard, decoded, vectors, worker)


# -- runners --------------------------------------------------------------------------------------
class Runner(Protocol):
    #: decode processes inside each shard task (None: the engine's setting)
    decode_workers: int | None

    def map(self, shards: list[Shard], job: ShardJob) -> Iterator[tuple[str, bytes]]:
        """Run :func:`encode_shard` on each shard; yield (shard name, part file bytes) as each finishes."""
        ...


class LocalRunner:
    """Shards one after another in this process (the model loaded once, or the engine's given),
    decoding in ``decode_workers`` processes (None: the engine's setting, as the local path)."""

    def __init__(self, encoder: "ClipEncoder | None" = None, decode_workers: int | None = None) -> None:
        self.encoder = encoder
        self.decode_workers = decode_workers

    def map(self, shards: list[Shard], job: ShardJob) -> Iterator[tuple[str, bytes]]:
        for shard in shards:
            if self.encoder is None:
                self.encoder = load_shard_encoder(job)
            yield shard.name, part_bytes(encode_shard(shard.entries, job, shard.name, self.encoder))


class _ShardActor:
    """Ray Data callable class: holds the model once per actor; one shard per call."""

    def __init__(self, job: ShardJob) -> None:
        self.job = job
        self.encoder = load_shard_encoder(job)

    def __call__(self, batch: dict) -> dict:
        names, parts = [], []
        for name, entries in zip(batch["shard"], batch["entries"]):
            files = tuple(FileEntry(*e) for e in json.loads(str(entries)))
            names.append(str(name))
            parts.append(part_bytes(encode_shard(files, self.job, str(name), self.encoder)))
        return {"shard": np.array(names), "part": np.array(parts, dtype=object)}


@dataclass(frozen=True)
class PoolPlan:
    """How many shard actors Ray runs and what each one reserves."""

    actors: int
    num_gpus: int  # per actor: 1 on a cluster with GPUs (unless the device is cpu), else 0
    num_cpus: int  # per actor: 1 without a GPU (the model's threads), 0 beside one


def plan_pool(resources: dict, device: str, shards: int, concurrency: int | None = None) -> PoolPlan:
    """The actor pool for ``shards`` shards on a cluster with ``resources`` (``ray.cluster_resources()``):
    one actor per GPU when the cluster has GPUs and ``device`` is not cpu, else one per CPU; never
    more actors than shards. ``concurrency`` overrides the count."""
    gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
    actors = concurrency or gpus or max(1, int(resources.get("CPU", 1)))
    return PoolPlan(max(1, min(actors, shards)), 1 if gpus else 0, 0 if gpus else 1)


class RayRunner:
    """Shards on Ray Data: an actor pool (see :func:`plan_pool`), each actor holding the model once.
    ``address``: a cluster (``ray://host:10001``, ``auto``); None starts a local Ray unless one is
    already initialised in this process. Each actor decodes in ``decode_workers`` child processes,
    so a file that hangs or needs too much memory costs that file, not the actor and its shard."""

    decode_workers = 1

    def __init__(self, address: str | None = None, concurrency: int | None = None,
                 decode_workers: int | None = None) -> None:
        self.address = address
        self.concurrency = concurrency
        if decode_workers is not None:
            self.decode_workers = decode_workers

    def map(self, shards: list[Shard], job: ShardJob) -> Iterator[tuple[str, bytes]]:
        ray = import_ray()
        started = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kwargs = {} if self.address and self.address.startswith("ray://") else {"include_dashboard": False}
            ray.init(address=self.address, log_to_driver=False, **kwargs)
            started = True
        try:
            pool = plan_pool(ray.cluster_resources(), job.device, len(shards), self.concurrency)
            rows = [{"shard": s.name, "entries": json.dumps([[e.path, e.size, e.mtime, e.sidecar] for e in s.entries])}
                    for s in shards]
            ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
                _ShardActor, fn_constructor_kwargs={"job": job}, batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=pool.actors), num_gpus=pool.num_gpus, num_cpus=pool.num_cpus)
            for row in ds.iter_rows():
                yield str(row["shard"]), bytes(row["part"])
        finally:
            if started:
                ray.shutdown()


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data: pip install 'searchengine[ray]' ({exc})") from None
    return ray


# -- the driver -----------------------------------------------------------------------------------
class Sharded:
    """Feeds :func:`indexer.run_files` from shards run by ``runner`` (see the module's doc)."""

    def __init__(self, runner: Runner | None = None, shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        if shard_size < 1:
            raise ConfigError("the shard size must be at least 1")
        self.runner = runner
        self.shard_size = shard_size
        self.ran: list[str] = []  # shards computed by the last run (the others were resumed)

    def job_for(self, engine: "SearchEngine", options: DecodeOptions, runner: Runner) -> ShardJob:
        s = engine.settings
        workers = runner.decode_workers
        return ShardJob(model_spec=engine.collection.model_spec, device=s.device, precision=s.precision,
                        batch_size=s.batch_size, fingerprint=bytes(engine.collection.fingerprint),
                        known_hashes=options.known_hashes, own_hashes=dict(options.own_hashes),
                        max_pixels=options.max_pixels, ocr=options.ocr, ocr_hashes=options.ocr_hashes,
                        timeout=options.timeout, memory_limit=options.memory_limit,
                        decode_workers=s.decode_workers() if workers is None else workers)

    def job_dir(self, engine: "SearchEngine", job: ShardJob, shards: list[Shard]) -> Path:
        h = hashlib.sha256(job.digest().encode())
        for shard in shards:
            h.update(json.dumps([shard.name, [[e.path, e.size, e.mtime, e.sidecar] for e in shard.entries]]).encode())
        return parts_root(engine) / h.hexdigest()[:20]

    def batches(self, engine: "SearchEngine", candidates: list[FileEntry], options: DecodeOptions,
                batch_size: int, progress=None) -> Iterator[tuple[list[Decoded], dict[str, np.ndarray]]]:
        """Run the shards, yielding each part's files in batches with its vectors as soon as the part
        is back (the caller writes them), so the store fills while the job runs and a failure costs
        only the shards then running: their files are still new on the next run, the rest are in
        the store. A part is deleted once the caller has taken all of it; parts of this same job
        left by a run that stopped before writing them are written first, not computed again.
        ``progress`` (an :class:`indexer.Progress`, started) advances by a shard's files as it finishes."""
        runner = self.runner or LocalRunner(engine.encoder)
        job = self.job_for(engine, options, runner)
        shards = make_shards(candidates, self.shard_size)
        folder = self.job_dir(engine, job, shards)
        for other in parts_root(engine).glob("*"):  # other jobs' parts: one writer a collection, so stale
            if other != folder:
                shutil.rmtree(other, ignore_errors=True)
        done = [s for s in shards if (folder / f"{s.name}.npz").exists()]
        todo = [s for s in shards if s not in done]
        self.ran = []
        if progress is not None and done:
            progress.advance(sum(len(s.entries) for s in done))
        for shard in done:
            path = folder / f"{shard.name}.npz"
            yield from self._take(read_part(path), path, batch_size)
        if todo:
            sizes = {s.name: len(s.entries) for s in todo}
            log.info("%d of %d shards to run (%s)", len(todo), len(shards), folder)
            for name, data in runner.map(todo, job):
                write_part(folder / f"{name}.npz", data)
                self.ran.append(name)
                if progress is not None:
                    progress.advance(sizes[name])
                log.info("%s done (%d/%d)", name, len(self.ran), len(todo))
                yield from self._take(read_part(data), folder / f"{name}.npz", batch_size)
        shutil.rmtree(parts_root(engine), ignore_errors=True)

    @staticmethod
    def _take(part: Part, path: Path, batch_size: int) -> Iterator[tuple[list[Decoded], dict[str, np.ndarray]]]:
        """``part``'s files in batches; then its file at ``path`` goes."""
        log.debug("%s was computed by %s", part.shard, part.worker)
        for start in range(0, len(part.files), batch_size):
            yield part.files[start : start + batch_size], part.vectors
        path.unlink()  # the caller asked for more: it has written every batch of this part


def parts_root(engine: "SearchEngine") -> Path:
    return engine.settings.collection_dir / "parts"
