"""Import a product catalog: rows -> products with attributes, their images indexed, their
titles and captions encoded, all upserted by product id.

Re-importing a changed catalog updates changed products, removes products that left it,
and encodes only what changed: images are skipped by (path, size, mtime) or content hash,
texts by their hash, unchanged rows are not written at all. URL images are downloaded
into the collection's cache once (``refresh=True`` downloads again).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from searchengine.engine import SearchEngine
from searchengine.store import FileErrorRecord, ProductWrite

from .catalog import Catalog, CatalogColumns, CatalogRow, is_url, read_catalog
from .fetch import FetchOptions, cache_path, fetch_many
from .run import run_files
from .scan import FileEntry, ScanResult, sidecar_signature
from .writer import IndexReport, text_vectors

if TYPE_CHECKING:
    from .distributed import Sharded

__all__ = ["import_catalog", "ImportReport"]

WRITE_BATCH = 500


@dataclass
class ImportReport:
    """What one ``import`` run did."""

    catalog: str = ""
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    row_errors: int = 0
    download_errors: int = 0
    downloaded: int = 0
    images: IndexReport = field(default_factory=IndexReport)
    errors: list[FileErrorRecord] = field(default_factory=list)  # bad rows, failed downloads, bad images
    seconds: float = 0.0

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("images", "errors")}
        out["images"] = {k: v for k, v in self.images.to_dict().items() if k != "errors"}
        out["errors"] = [{"where": e.path, "error": e.error} for e in self.errors]
        return out


def import_catalog(path: str | os.PathLike | Catalog, *, engine: SearchEngine | None = None, collection: str | None = None,
                   model: str | None = None, columns: CatalogColumns | None = None,
                   fetch_options: FetchOptions | None = None, prune: bool = True, refresh: bool = False,
                   progress=None, sharded: "Sharded | None" = None, **open_kwargs: object) -> ImportReport:
    """Import (or re-import) a catalog file (CSV, TSV, JSONL, JSON, Parquet) into a collection.

    ``prune``: remove products this catalog imported before that are no longer in it (a row
    that is now invalid keeps its product as it was). Bad rows, failed downloads and bad
    images are recorded as errors with their line number or URL; nothing else is lost.
    ``sharded``: decode and encode the catalog's images in shards (on Ray:
    :class:`indexer.distributed.Sharded`); downloads and the products' texts stay here.
    """
    # a bad file fails before a collection is created; a Catalog already read is used as is
    catalog = path if isinstance(path, Catalog) else read_catalog(path, columns or CatalogColumns())
    own = engine is None
    if engine is None:
        engine = SearchEngine.open(collection, model=model, create=True, writable=True, **open_kwargs)  # type: ignore[arg-type]
    try:
        return _import(engine, catalog, fetch_options or FetchOptions(), prune, refresh, progress, sharded)
    finally:
        if own:
            engine.close()


def _import(engine: SearchEngine, catalog, fetch_options: FetchOptions, prune: bool, refresh: bool,
            progress, sharded: "Sharded | None" = None) -> ImportReport:
    started = time.perf_counter()
    store, cid = engine.store, engine.collection.id
    report = ImportReport(catalog=catalog.path)
    now = time.time()
    row_errors = [FileErrorRecord(f"{catalog.path}:{e.line}", (f"product {e.product_id!r}: " if e.product_id else "")
                                  + e.error, 0, 0.0, now) for e in catalog.errors]
    report.row_errors = len(row_errors)

    # 1. images: download URLs into the cache, then index every file like a folder run
    refs = list(dict.fromkeys(ref for row in catalog.rows for ref in row.images))
    cache = engine.settings.collection_dir / "downloads"
    urls = [r for r in refs if is_url(r)]
    if refresh:
        for url in urls:
            cache_path(cache, url).unlink(missing_ok=True)
    fresh = sum(not cache_path(cache, u).exists() for u in urls)
    fetched = fetch_many(urls, cache, fetch_options)
    local: dict[str, str] = {}
    download_errors: list[FileErrorRecord] = []
    for ref in refs:
        got = fetched.get(ref, ref)
        if isinstance(got, Exception):
            download_errors.append(FileErrorRecord(ref, str(got), 0, 0.0, now))
        else:
            local[ref] = os.path.abspath(os.fspath(got))
    report.download_errors = len(download_errors)
    report.downloaded = fresh - len(download_errors)
    # A downloaded file's errors are recorded under its URL (the cache file's name tells the user
    # nothing); the indexer sees them under the cached file's path.
    url_of = {local[u]: u for u in urls if u in local}
    paths = set(local.values())
    known_errors: dict[str, FileErrorRecord] = {}
    for e in store.file_errors(cid):
        if e.path in paths and e.path not in url_of:
            known_errors[e.path] = e
        elif is_url(e.path) and e.path in local:
            known_errors[local[e.path]] = replace(e, path=local[e.path])
    scanned = _stat_files(sorted(paths))
    # the download cache and the folders of local image files: originals are served from these only
    store.add_roots(cid, [str(cache)] + [os.path.dirname(p) for p in paths if p not in url_of])
    report.images = run_files(engine, scanned, store.images_at(cid, local.values()), list(known_errors.values()),
                              progress=progress, source="catalog", sharded=sharded)
    report.images.errors = [replace(e, path=url_of[e.path], error=f"cannot index the image at {url_of[e.path]}: "
                                    f"{e.error}") if e.path in url_of else e for e in report.images.errors]
    image_ids = {r.path: r.id for r in store.images_at(cid, local.values())}
    working = {u for p, u in url_of.items() if image_ids.get(p) is not None}

    # 2. products: write the changed ones (or those whose images changed), remove the vanished ones
    stored = store.catalog_products(cid, catalog.path)
    links = store.image_links(cid, catalog.path)
    todo: list[tuple[CatalogRow, ProductWrite]] = []
    for row in catalog.rows:
        images = [(pos, ref, image_ids.get(local.get(ref, ""))) for pos, ref in enumerate(row.images)]
        previous = stored.get(row.product_id)
        same_images = all(links.get(ref) == img for _, ref, img in images)
        if previous is not None and previous[1] == row.fingerprint and same_images:
            report.unchanged += 1
            continue
        todo.append((row, ProductWrite(
            key=row.product_id, title=row.title, description=row.description, caption=row.caption,
            attributes=row.attributes, fingerprint=row.fingerprint, catalog=catalog.path, images=images)))
    keep = {r.product_id for r in catalog.rows} | {e.product_id for e in catalog.errors if e.product_id}
    removed = [pid for key, (pid, _) in stored.items() if key not in keep] if prune else []
    # stale: this catalog's row errors (rewritten below), errors under cache paths (now under their
    # URLs) and those of URLs that now download and decode
    old_errors = [e.path for e in store.file_errors(cid)
                  if e.path.startswith(catalog.path + ":") or e.path in url_of or e.path in working]
    errors = row_errors + download_errors + [e for e in report.images.errors if is_url(e.path)]
    refs_before = store.product_refs(cid, catalog.path)
    for start in range(0, max(len(todo), 1), WRITE_BATCH):
        batch = todo[start : start + WRITE_BATCH]
        last = start + WRITE_BATCH >= len(todo)
        store.write_products(cid, [p for _, p in batch], text_vectors=text_vectors(engine, [t for _, p in batch for t in (p.title, p.caption)])[0],
                             removed=removed if last else (), errors=errors if last else (),
                             cleared_errors=old_errors if start == 0 else ())
        for row, _ in batch:
            if row.product_id in stored:
                report.updated += 1
            else:
                report.added += 1
    report.removed = len(removed)
    _drop_unused_images(engine)
    _clear_unused_errors(engine, refs_before - store.product_refs(cid), cache)
    engine.indexes.commit()  # rebuilt from the store when it could not take a removal
    report.errors = errors + [e for e in report.images.errors if not is_url(e.path)]
    report.seconds = time.perf_counter() - started
    return report


def _stat_files(paths: list[str]) -> ScanResult:
    """The scan of an explicit file list (catalog images need no image extension: content decides)."""
    result = ScanResult(roots=[])
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            result.errors.append((path, f"cannot read image file: {exc.strerror or exc}"))
            continue
        result.files.append(FileEntry(path=path, size=int(st.st_size), mtime=float(st.st_mtime),
                                      sidecar=sidecar_signature(path)))
    return result


def _clear_unused_errors(engine: SearchEngine, refs: set[str], cache) -> None:
    """The recorded errors of image references no product uses any more (downloads, bad files) go."""
    if not refs:
        return
    candidates = set()
    for ref in refs:
        if is_url(ref):
            candidates.update((ref, os.path.abspath(os.fspath(cache_path(cache, ref)))))
        else:
            candidates.add(os.path.abspath(ref))
    stale = [e.path for e in engine.store.file_errors(engine.collection.id) if e.path in candidates]
    if stale:
        engine.store.write_batch(engine.collection.id, cleared_errors=stale)


def _drop_unused_images(engine: SearchEngine) -> None:
    """Images a catalog brought in that no product uses any more leave the store and the index."""
    unused = engine.store.unlinked_catalog_images(engine.collection.id)
    if not unused:
        return
    engine.store.write_batch(engine.collection.id, removed=unused)
    engine.indexes.apply(removed=unused)
