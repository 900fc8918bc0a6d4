"""Run the indexer: index folders, apply a scan to the store (``run_files``, which the catalog
importer builds on too) and remove paths."""

from __future__ import annotations

import logging
import os
import time
from contextlib import closing
from typing import TYPE_CHECKING, Iterable, Iterator, Protocol

from searchengine.engine import SearchEngine
from searchengine.errors import ConfigError
from searchengine.imaging import image_extensions
from searchengine.ocr import available as ocr_available
from searchengine.store import FileErrorRecord, ImageRecord

from .diff import Plan, plan
from .pipeline import Decoded, DecodeOptions, decode_all, iter_batches
from .scan import ScanResult, normalize_roots, scan
from .writer import IndexReport, Writer

if TYPE_CHECKING:
    from .distributed import Sharded

log = logging.getLogger(__name__)

__all__ = ["index_folder", "run_files", "remove_paths", "Progress"]


class Progress(Protocol):
    """What the indexer reports progress to (the CLI passes a tqdm bar)."""

    def start(self, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def close(self) -> None: ...


def index_folder(paths: Iterable[str | os.PathLike] | str | os.PathLike, *, engine: SearchEngine | None = None,
                 collection: str | None = None, model: str | None = None, retry_errors: bool = False,
                 ocr: bool | None = None, progress: Progress | None = None, sharded: "Sharded | None" = None,
                 **open_kwargs: object) -> IndexReport:
    """Index (or re-index) one or more folders into a collection, incrementally.

    Unchanged files are skipped without decoding, changed ones re-encoded, moved ones keep
    their id, vanished ones are removed, identical content is encoded once, and unreadable
    files become recorded errors. Captions and metadata come from sidecar files (``photo.txt``,
    ``photo.json``) and the date taken from EXIF. ``ocr=True`` reads the text inside images
    (needs the ``ocr`` extra) and stays on for the collection until ``ocr=False``.
    Pass an open ``engine``, or the arguments of :meth:`SearchEngine.open` (the collection is
    created when missing). ``sharded`` (:class:`indexer.distributed.Sharded`) decodes and encodes
    in resumable shards, e.g. on Ray, instead of this process's decode workers.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    roots = normalize_roots(paths)  # a wrong path fails before any collection is created
    own = engine is None
    if engine is None:
        engine = SearchEngine.open(collection, model=model, create=True, writable=True, **open_kwargs)  # type: ignore[arg-type]
    try:
        if ocr is not None and bool(ocr) != bool(engine.collection.ocr):
            if ocr:
                if not ocr_available():
                    raise ConfigError("reading text in images needs the ocr extra: pip install 'searchengine[ocr]'")
            engine.set_ocr(ocr)
        scanned = scan(roots, image_extensions())
        cid = engine.collection.id
        engine.store.add_roots(cid, roots)
        return run_files(engine, scanned, engine.store.images_under(cid, scanned.roots),
                         engine.store.file_errors(cid, scanned.roots), retry_errors=retry_errors, progress=progress,
                         sharded=sharded)
    finally:
        if own:
            engine.close()


def run_files(engine: SearchEngine, scanned: ScanResult, rows: list[ImageRecord], errors: list[FileErrorRecord], *,
              retry_errors: bool = False, progress: Progress | None = None, source: str = "folder",
              sharded: "Sharded | None" = None) -> IndexReport:
    """Bring the store in step with scanned files, given the rows and errors stored for them
    (rows not among the scanned files and not under a scan error are removed as vanished)."""
    started = time.perf_counter()
    report = IndexReport()
    store, cid = engine.store, engine.collection.id
    ocr = bool(engine.collection.ocr)
    work: Plan = plan(scanned, rows, errors, retry_errors=retry_errors, ocr=ocr)
    report.unchanged, report.known_failures = work.unchanged, work.known_failures
    if source == "folder":  # a folder now covers images a catalog brought in: they stay with the folder
        seen = {e.path for e in scanned.files}
        store.claim_for_folder([r.id for p, r in work.existing.items() if r.source == "catalog" and p in seen])
    writer = Writer(engine, work, report, source=source)
    if scanned.errors:
        now = time.time()
        errs = [FileErrorRecord(p, msg, 0, 0.0, now) for p, msg in scanned.errors]
        store.write_batch(cid, errors=errs)
        report.failed += len(errs)
        report.errors.extend(errs)
    if progress is not None:
        progress.start(len(work.candidates))
    if sharded is not None:
        sharded.ran = []  # nothing to decode leaves it empty too
    try:
        if work.candidates:
            encoder = engine.encoder
            options = DecodeOptions(pil_stage=encoder.pil_stage, known_hashes=writer.known_hashes,
                                    own_hashes=writer.own_hashes, max_pixels=engine.settings.max_pixels,
                                    draft_size=encoder.image_size, ocr=ocr,
                                    ocr_hashes=store.ocr_hashes(cid) if ocr else frozenset(),
                                    timeout=engine.settings.decode_timeout,
                                    memory_limit=engine.settings.decode_memory())
            batch_size = engine.settings.batch_for(encoder.device)
            if sharded is not None:  # decoded and encoded in shards (maybe elsewhere), written here
                # progress counts each shard's files as it finishes (the long part), not the writes
                batches = sharded.batches(engine, work.candidates, options, batch_size, progress)
            else:  # decoding stays at least two batches ahead of the model, so a GPU never waits for a batch
                batches = _paired(decode_all(work.candidates, options, engine.settings.decode_workers(),
                                             max_pending=max(256, 2 * batch_size)), batch_size)
            with closing(batches):
                for batch, vectors in batches:
                    writer.write(batch, vectors)
                    if progress is not None and sharded is None:
                        progress.advance(len(batch))
        writer.finish(work.stale_errors)
    except BaseException as exc:
        if writer.wrote:
            try:  # committed batches stay; the index is reconciled on the next open anyway
                writer.save()
            except Exception as save_exc:  # noqa: BLE001 - the first error (e.g. the store's disk is full) is the one to report
                log.warning("the index could not be saved after the run failed: %s", save_exc)
                raise exc from None
        raise
    finally:
        if progress is not None:
            progress.close()
    report.seconds = time.perf_counter() - started
    return report


def _paired(decoded: Iterator[Decoded], size: int) -> Iterator[tuple[list[Decoded], None]]:
    """Batches of decoded files, with no vectors computed elsewhere; closing it stops the decoders."""
    with closing(decoded):
        for batch in iter_batches(decoded, size):
            yield batch, None


def remove_paths(paths: Iterable[str | os.PathLike] | str | os.PathLike, *, engine: SearchEngine) -> IndexReport:
    """Remove the images at or below ``paths`` (files or folders, present on disk or not) and their
    recorded errors from the collection; the index is updated and saved. Products keep their rows."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    started = time.perf_counter()
    roots = [os.path.abspath(os.path.expanduser(os.fspath(p))) for p in paths]
    cid = engine.collection.id
    ids = [r.id for r in engine.store.images_under(cid, roots)]
    errors = [e.path for e in engine.store.file_errors(cid, roots)]
    report = IndexReport(removed=len(ids))
    if ids or errors:
        engine.store.write_batch(cid, removed=ids, cleared_errors=errors)
        engine.indexes.apply(removed=ids)
        engine.indexes.commit()  # an index type that cannot remove is rebuilt from the store
    report.seconds = time.perf_counter() - started
    return report
