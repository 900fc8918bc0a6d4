"""CLI commands that write a collection: ``index`` (folders), ``import`` (a product catalog) and
``remove`` (images leave it); the indexer does the work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from indexer import import_catalog, index_folder, remove_paths
from indexer.catalog import CatalogColumns, read_catalog
from indexer.distributed import RayRunner, Sharded, import_ray
from indexer.fetch import FetchOptions
from indexer.scan import normalize_roots

from ..config import Settings
from ..engine import SearchEngine
from ..errors import ConfigError
from .options import (
    Collection,
    DataDir,
    Db,
    Device,
    EngineKind,
    Json,
    Precision,
    ProgressBar,
    RayAddress,
    ShardSize,
    Verbose,
    echo_errors,
    echo_json,
    handle_errors,
    open_engine,
    setup_logging,
)
from .stages import caption_collection

__all__ = ["index", "import_", "remove", "rebuild_index", "build_index", "export_model"]

Paths = Annotated[list[Path], typer.Argument(help="Folders (searched recursively) or image files.", show_default=False)]
NewModel = Annotated[Optional[str], typer.Option(
    "--model", "-m", envvar="SEARCHENGINE_MODEL", show_default=False,
    help="Model for a NEW collection: ARCH:TAG, ARCH:/path/weights, hf-hub:org/repo or local-dir:/path "
         "[default: ViT-B-32:laion2b_s34b_b79k]. An existing collection keeps its model.")]
IndexFactory = Annotated[Optional[str], typer.Option(
    "--index-factory", show_default=False,
    help="faiss factory string for a new collection, e.g. Flat, HNSW32, IVF1024,Flat; auto chooses by size "
         "(exact Flat below 100,000 images, IVF with nprobe tuned to recall@10 >= 0.97 above) [default: auto].")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, show_default=False,
                                                  help="Images per model batch [default: 32 on CPU, 256 on GPU].")]
Workers = Annotated[Optional[int], typer.Option("--workers", "-w", min=0, show_default=False,
                                                help="Decode processes; 0 decodes in the main process "
                                                     "[default: from the core count].")]
RetryErrors = Annotated[bool, typer.Option("--retry-errors", help="Retry files that failed before even if unchanged.")]
Ocr = Annotated[Optional[bool], typer.Option(
    "--ocr/--no-ocr", show_default=False,
    help="Read the text inside images (signs, labels, screenshots) so keyword and hybrid search find it; "
         "needs the ocr extra. The choice sticks to the collection [default: off].")]
CaptionAfter = Annotated[bool, typer.Option(
    "--caption", help="Caption each image with BLIP after indexing; the captions become searchable text "
                      "(keyword search, image->text) and are never recomputed for an unchanged image.")]
IndexCaptionModel = Annotated[Optional[str], typer.Option(
    "--caption-model", envvar="SEARCHENGINE_CAPTION_MODEL", show_default=False,
    help="--caption: a Hugging Face id or save_pretrained folder "
         "[default: Salesforce/blip-image-captioning-base].")]


def index(
    paths: Paths, collection: Collection = "default", model: NewModel = None, index_factory: IndexFactory = None,
    batch_size: BatchSize = None, workers: Workers = None, retry_errors: RetryErrors = False, ocr: Ocr = None,
    caption: CaptionAfter = False, caption_model: IndexCaptionModel = None,
    engine_kind: EngineKind = "local", address: RayAddress = None, shard_size: ShardSize = 1024,
    data_dir: DataDir = None, db: Db = None, device: Device = "auto", precision: Precision = "auto",
    json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Index folders into a collection: recursive and incremental (unchanged files are skipped,
    moved files keep their id, vanished files are removed; unreadable files are recorded as errors).

    Captions and metadata are read from sidecar files next to each image (photo.txt holds a
    caption; photo.json an object with "caption" and any other fields, which become filterable
    attributes), and the date taken from EXIF."""
    setup_logging(verbose)
    with handle_errors():
        settings = Settings.from_env(collection=collection, data_dir=data_dir, db_url=db, model=model, device=device,
                                     precision=precision, index_factory=index_factory, batch_size=batch_size,
                                     workers=workers)
        roots = normalize_roots(paths)  # a mistyped path fails before a collection is created
        sharded = _sharded(engine_kind, address, shard_size)
        with SearchEngine.open(settings=settings, create=True, writable=True) as engine:
            report = index_folder(roots, engine=engine, retry_errors=retry_errors, ocr=ocr,
                                  progress=ProgressBar(enabled=not json_out), sharded=sharded)
            captioned = caption_collection(engine, caption_model, show=not json_out) if caption else None
        _print_index_report(report, captioned, json_out)


def _print_index_report(report: Any, captioned: int | None, json_out: bool) -> None:
    """``index``'s summary: JSON, or one line of counts (and the captioned count, the failures)."""
    if json_out:
        echo_json(dict(report.to_dict(), **({"captioned": captioned} if captioned is not None else {})))
        return
    rate = report.encoded / report.seconds if report.seconds else 0.0
    typer.echo(f"{report.added} added, {report.updated} updated, {report.moved} moved, {report.removed} removed, "
               f"{report.unchanged} unchanged, {report.failed} failed"
               f" ({report.encoded} encoded, {report.duplicates} duplicates reused) in {report.seconds:.1f}s"
               + (f", {rate:.1f} images/s" if report.encoded else ""))
    if report.known_failures:
        typer.echo(f"{report.known_failures} files failed before and were skipped (--retry-errors to retry).")
    if captioned is not None:
        typer.echo(f"{captioned} images captioned.")
    if report.sidecar_errors:
        typer.echo(f"{report.sidecar_errors} caption sidecars could not be read (see --verbose).", err=True)
    echo_errors(report.errors)


def _sharded(engine_kind: str, address: str | None, shard_size: int) -> Sharded | None:
    """The shard runner ``--engine`` asks for (None: the local path); checked before any collection is created."""
    if engine_kind not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, not {engine_kind!r}")
    if engine_kind == "local":
        return None
    import_ray()  # a missing extra fails here, not after the scan
    return Sharded(RayRunner(address), shard_size)


Catalog = Annotated[Path, typer.Argument(help="Catalog file: .csv, .tsv, .jsonl, .json (array) or .parquet.",
                                         show_default=False)]
IdColumn = Annotated[Optional[str], typer.Option(
    "--id-column", show_default=False, help="Product id column [default: id, product_id, sku or item_id].")]
ImageColumn = Annotated[Optional[list[str]], typer.Option(
    "--image-column", show_default=False,
    help="Image column (repeat for several); cells hold paths or http(s) URLs, several separated by | "
         "[default: images, image, image_url, image_path...].")]
TitleColumn = Annotated[Optional[str], typer.Option("--title-column", show_default=False,
                                                    help="[default: title, name or product_name]")]
DescriptionColumn = Annotated[Optional[str], typer.Option(
    "--description-column", show_default=False, help="[default: description, desc or body]")]
CaptionColumn = Annotated[Optional[str], typer.Option("--caption-column", show_default=False,
                                                      help="[default: caption or text]")]
Attribute = Annotated[Optional[list[str]], typer.Option(
    "--attribute", show_default=False,
    help="Keep only these columns as attributes (repeat) [default: every other column].")]
KeepMissing = Annotated[bool, typer.Option(
    "--keep-missing", help="Keep products that are no longer in the catalog (default: remove them).")]
Refresh = Annotated[bool, typer.Option("--refresh", help="Download URL images again instead of using the cache.")]
Timeout = Annotated[float, typer.Option(min=0.1, help="Seconds per download attempt.")]
MaxDownloadMb = Annotated[float, typer.Option(min=0.01, help="Largest image to download, in MB.")]
Retries = Annotated[int, typer.Option(min=0, help="Extra attempts after timeouts and server errors.")]
ImportModel = Annotated[Optional[str], typer.Option(
    "--model", "-m", envvar="SEARCHENGINE_MODEL", show_default=False,
    help="Model for a NEW collection (as for index).")]


def import_(
    catalog: Catalog, id_column: IdColumn = None, image_column: ImageColumn = None, title_column: TitleColumn = None,
    description_column: DescriptionColumn = None, caption_column: CaptionColumn = None, attribute: Attribute = None,
    keep_missing: KeepMissing = False, refresh: Refresh = False, timeout: Timeout = 20.0,
    max_download_mb: MaxDownloadMb = 50.0, retries: Retries = 2, model: ImportModel = None,
    engine_kind: EngineKind = "local", address: RayAddress = None, shard_size: ShardSize = 1024,
    collection: Collection = "default", data_dir: DataDir = None, db: Db = None, device: Device = "auto",
    json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Import a product catalog: one product per row with an id, images (paths or URLs), title,
    description, caption and any other columns as filterable attributes (category, brand, price,
    tags...). Re-importing upserts by product id, removes products that left the catalog and
    encodes only what changed. Bad rows are reported with their line number; the rest imports."""
    setup_logging(verbose)
    with handle_errors():
        columns = CatalogColumns(id=id_column, images=tuple(image_column or ()), title=title_column,
                                 description=description_column, caption=caption_column,
                                 attributes=tuple(attribute) if attribute else None)
        fetch = FetchOptions(timeout=timeout, max_bytes=int(max_download_mb * 1024 * 1024), retries=retries)
        settings = Settings.from_env(collection=collection, data_dir=data_dir, db_url=db, model=model, device=device)
        rows = read_catalog(catalog, columns)  # a bad file or column fails before a collection is created
        sharded = _sharded(engine_kind, address, shard_size)
        with SearchEngine.open(settings=settings, create=True, writable=True) as engine:
            report = import_catalog(rows, engine=engine, columns=columns, fetch_options=fetch,
                                    prune=not keep_missing, refresh=refresh,
                                    progress=ProgressBar(enabled=not json_out), sharded=sharded)
        if json_out:
            echo_json(report.to_dict())
            return
        typer.echo(f"{report.added} products added, {report.updated} updated, {report.removed} removed, "
                   f"{report.unchanged} unchanged, {report.row_errors} bad rows; images: {report.images.added} added, "
                   f"{report.images.encoded} encoded, {report.downloaded} downloaded, "
                   f"{report.download_errors + report.images.failed} failed, in {report.seconds:.1f}s")
        echo_errors(report.errors)


RemovePaths = Annotated[list[Path], typer.Argument(help="Files or folders (they need not exist any more).",
                                                   show_default=False)]


def remove(
    paths: RemovePaths, collection: Collection = "default", data_dir: DataDir = None, db: Db = None,
    device: Device = "auto", json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Remove the images at or below PATHS from the collection (the files themselves are not touched)."""
    setup_logging(verbose)
    with handle_errors(), open_engine(collection, data_dir, db, device, writable=True) as engine:
        report = remove_paths(paths, engine=engine)
        if json_out:
            echo_json(report.to_dict())
        else:
            typer.echo(f"Removed {report.removed} images from {collection!r}.")


SwitchFactory = Annotated[Optional[str], typer.Option(
    "--index-factory", show_default=False,
    help="Switch to another faiss factory string while rebuilding (auto: chosen by size).")]


def rebuild_index(
    index_factory: SwitchFactory = None, collection: Collection = "default", data_dir: DataDir = None, db: Db = None,
    json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Rebuild the vector index from the vectors kept in the store (no image is decoded again)."""
    setup_logging(verbose)
    with handle_errors():
        with open_engine(collection, data_dir, db, "cpu", writable=True) as engine:
            n = engine.rebuild_index(index_factory)
            st = engine.status()
        if json_out:
            echo_json({"vectors": n, "index_factory": st.index_factory, "index_type": st.index_type})
        else:
            typer.echo(f"Rebuilt the {st.index_factory} index ({st.index_type}) with {n} vectors.")


Factory = Annotated[str, typer.Option(
    "--factory", help="An inverted-file faiss factory string, e.g. IVF65536,PQ32 (lists, then the code: "
                      "PQ32 = 32 bytes a vector, SQ8 = one byte a dimension).")]
Sample = Annotated[Optional[int], typer.Option(
    min=1, show_default=False, help="Stored vectors to train on (default: 50 per list, at least 20,000).")]
VectorShardSize = Annotated[int, typer.Option(min=1, help="Vectors added per shard file before the merge.")]


def build_index(
    factory: Factory, sample: Sample = None, shard_size: VectorShardSize = 1_000_000,
    collection: Collection = "default", data_dir: DataDir = None, db: Db = None,
    json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Build the vector index on disk for a large collection: train on a sample of the stored vectors,
    add them in shards, merge the shards into one .ivfdata file and serve it memory-mapped.

    Images indexed later go to a small in-memory part searched alongside; removed ones are hidden.
    Run it again (or rebuild-index) when that part has grown large."""
    setup_logging(verbose)
    with handle_errors():
        with open_engine(collection, data_dir, db, "cpu", writable=True) as engine:
            n = engine.build_index(factory, sample=sample, shard_size=shard_size)
            st, stats = engine.status(), engine.last_build
        if json_out:
            echo_json({"vectors": n, "index_factory": st.index_factory, "index_type": st.index_type,
                       "nprobe": st.index_nprobe, "index_storage": st.index_storage, "index_note": st.index_note,
                       "build": None if stats is None else {k: round(v, 3) if isinstance(v, float) else v
                                                            for k, v in vars(stats).items()}})
            return
        typer.echo(f"Built the {st.index_factory} index ({st.index_type}) with {n} vectors.")
        if stats is not None and stats.vectors:
            typer.echo(f"train {stats.train_s:.1f} s on {stats.sample:,} vectors, add {stats.add_s:.1f} s in "
                       f"{stats.shards} shards, merge {stats.merge_s:.1f} s, nprobe {stats.nprobe} "
                       f"(recall@10 {stats.recall_at_10:.3f} of exact)")
        typer.echo(st.index_note if st.index_storage == "in memory" else st.index_storage)


def export_model(
    collection: Collection = "default", data_dir: DataDir = None, db: Db = None, json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Export the collection model's text tower (ONNX, verified against torch) and its tokenizer into the
    collection's folder, so that text searches load no torch and answer in well under a second.

    Example: searchengine export-model -c photos
    """
    setup_logging(verbose)
    with handle_errors():
        with open_engine(collection, data_dir, db, "cpu") as engine:
            meta = engine.export_model()
        text = meta["towers"]["text"]
        if json_out:
            echo_json({"collection": collection, "spec": meta["spec"], "fingerprint": meta["fingerprint"],
                       "dim": meta["dim"], "min_cosine": text["min_cosine"]})
        else:
            typer.echo(f"Exported the text tower of {meta['spec']} ({meta['dim']} dimensions, cosine "
                       f"{text['min_cosine']:.6f} to torch): text searches of {collection!r} now run on ONNX Runtime.")
