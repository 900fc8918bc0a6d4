"""CLI commands that read a collection: ``search`` (text, image, composed; filters, keyword/hybrid,
image->text), ``status`` and ``duplicates``.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Optional

import typer

from ..engine import SearchEngine
from ..errors import QueryError
from ..filters import Compare, In, Or, all_of, parse_filter_option, parse_where
from ..query import is_plain_text, parse_query
from .options import (
    Collection,
    DataDir,
    Db,
    Device,
    Json,
    Verbose,
    echo_json,
    handle_errors,
    open_engine,
    setup_logging,
)

__all__ = ["search", "status", "duplicates"]

Query = Annotated[str, typer.Argument(
    help='Text ("a dog on a beach"), an image path, or a composed query such as '
         '\'"red dress" - "long sleeves" + 0.5:./ref.jpg\' (see docs/searching.md).', show_default=False)]
TopK = Annotated[int, typer.Option("-k", "--top-k", min=1, max=10_000, help="Number of results.")]
To = Annotated[str, typer.Option(
    "--to", help="What to find: image (images and products) or text (captions and product titles: "
                 "image->text with an image QUERY, text->text with a text one).")]
AsText = Annotated[bool, typer.Option("--text", help="Treat QUERY as plain text: no image path, no composition.")]
Where = Annotated[Optional[str], typer.Option(
    "--where", show_default=False,
    help='Filter expression, e.g. \'category = "shoes" and price < 50\'; fields: attributes, path, folder, '
         'type, taken, caption, text, width, height, size, product, title.')]
Filters = Annotated[Optional[list[str]], typer.Option(
    "--filter", show_default=False,
    help="Filter KEY=VALUE, KEY!=VALUE, KEY>=VALUE... or a range KEY=LO..HI (repeat: all must hold).")]
Under = Annotated[Optional[list[str]], typer.Option(
    "--under", show_default=False, help="Only images under this folder (repeat for any of several).")]
FileType = Annotated[Optional[list[str]], typer.Option(
    "--type", show_default=False, help="Only these file types, e.g. jpg, png, heic (repeat).")]
Mode = Annotated[str, typer.Option(
    "--mode", help="vector (embeddings), keyword (words in captions, titles, attributes and image text) "
                   "or hybrid (both, fused by reciprocal rank).")]
KeywordWeight = Annotated[float, typer.Option(min=0.0, max=1.0, help="hybrid: the keyword ranking's share.")]
MinScore = Annotated[Optional[float], typer.Option(
    "--min-score", show_default=False, help="Drop hits scoring below this (cosine similarity in vector mode).")]
Sort = Annotated[str, typer.Option(
    "--sort", help="score, or date: the relevant hits (above --min-score, else the top k) newest first "
                   "by EXIF date taken.")]
Dedup = Annotated[bool, typer.Option("--dedup", help="Collapse near-duplicate images into their best hit.")]
DedupThreshold = Annotated[float, typer.Option(min=0.01, max=1.0, help="Cosine at which --dedup merges.")]
AllImages = Annotated[bool, typer.Option(
    "--images", help="One hit per image, even for several images of one product (default: one per product).")]
Rerank = Annotated[bool, typer.Option(
    "--rerank", help="Rescore the top hits with a cross-attention image-text matching model; scores become "
                     "match probabilities (--min-score applies to them).")]
RerankTop = Annotated[int, typer.Option("--rerank-top", min=1, help="--rerank: how many first-stage hits "
                                                                    "to rescore.")]
RerankModel = Annotated[Optional[str], typer.Option(
    "--rerank-model", envvar="SEARCHENGINE_RERANK_MODEL", show_default=False,
    help="--rerank: a folder from `train --itm`, or a BLIP ITM model (Hugging Face id or save_pretrained "
         "folder); required with --rerank: no reranker ships.")]
Caption = Annotated[bool, typer.Option("--caption", help="Caption each hit (BLIP; cached).")]
CaptionModel = Annotated[Optional[str], typer.Option(
    "--caption-model", envvar="SEARCHENGINE_CAPTION_MODEL", show_default=False,
    help="--caption: [default: Salesforce/blip-image-captioning-base].")]
Ask = Annotated[Optional[str], typer.Option(
    "--ask", show_default=False, help='Ask each hit a question, e.g. --ask "what brand is it?" (BLIP VQA; '
                                      "cached; model from SEARCHENGINE_VQA_MODEL).")]


def search(
    query: Query, k: TopK = 10, to: To = "image", as_text: AsText = False, where: Where = None,
    filters: Filters = None, under: Under = None, file_type: FileType = None, mode: Mode = "vector",
    keyword_weight: KeywordWeight = 0.5, min_score: MinScore = None, sort: Sort = "score", dedup: Dedup = False,
    dedup_threshold: DedupThreshold = 0.95, all_images: AllImages = False, rerank: Rerank = False,
    rerank_top: RerankTop = 20, rerank_model: RerankModel = None, caption: Caption = False,
    caption_model: CaptionModel = None, ask: Ask = None,
    collection: Collection = "default", data_dir: DataDir = None, db: Db = None, device: Device = "auto",
    json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Search a collection by text, by image or both, with filters, keyword/hybrid ranking and
    image->text retrieval: ranked hits with scores."""
    setup_logging(verbose)
    with handle_errors():
        if to not in ("image", "text"):
            raise QueryError(f"--to takes image or text, not {to!r}")
        path = os.path.expanduser(query)
        is_image = not as_text and os.path.isfile(path)
        composed = None if as_text or is_image else parse_query(query)
        if composed is not None and is_plain_text(composed):
            composed = None
        node = _filter_node(where, filters, under, file_type)
        with open_engine(collection, data_dir, db, device) as engine:
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
        _echo_hits(hits, engine, sort, json_out)


def _filter_node(where: str | None, filters: list[str] | None, under: list[str] | None,
                 file_type: list[str] | None) -> Any:
    """One filter tree from --where, every --filter, --under (any of them) and --type (any of them)."""
    return all_of([parse_where(where) if where else None, *(parse_filter_option(f) for f in filters or ()),
                   Or(tuple(Compare("folder", "=", u) for u in under)) if under and len(under) > 1
                   else (Compare("folder", "=", under[0]) if under else None),
                   In("type", tuple(t.lower().lstrip(".") for t in file_type)) if file_type else None])


def _echo_hits(hits: list, engine: SearchEngine, sort: str, json_out: bool) -> None:
    """Image hits: JSON, or one ranked line each (with any caption or answer below it)."""
    if json_out:
        echo_json([h.to_dict() for h in hits])
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
    """Text hits (``--to text``): JSON, or one ranked line each."""
    if json_out:
        echo_json([t.to_dict() for t in texts])
        return
    if not texts:
        typer.echo("No results: the collection has no captions or product titles.")
    for rank, t in enumerate(texts, 1):
        owner = f"[{t.product_id}]" if t.product_id else (t.path or "")
        typer.echo(f"{rank:>3}  {t.score:.4f}  {t.field}: {t.text}  {owner}")


ListErrors = Annotated[bool, typer.Option("--errors", help="List the files that could not be indexed.")]


def status(
    errors: ListErrors = False, collection: Collection = "default", data_dir: DataDir = None, db: Db = None,
    json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Show a collection: model, counts, vector index, and (with --errors) the files that failed."""
    setup_logging(verbose)
    with handle_errors():
        with open_engine(collection, data_dir, db, "cpu") as engine:
            st = engine.status()
            errs = engine.errors() if errors else []
        if json_out:
            out = st.to_dict()
            if errors:
                out["error_files"] = [{"path": e.path, "error": e.error} for e in errs]
            echo_json(out)
            return
        for key, value in _status_rows(st):
            typer.echo(f"{key:<12} {value}")
        for e in errs:
            typer.echo(f"  {e.path}: {e.error}")


def _status_rows(st: Any) -> list[tuple[str, Any]]:
    """``status``'s table: (label, value) rows."""
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
    return rows


DuplicateThreshold = Annotated[float, typer.Option(min=0.0, max=1.0, help="Cosine similarity at which two images "
                                                                          "count as near duplicates.")]


def duplicates(
    threshold: DuplicateThreshold = 0.95, collection: Collection = "default", data_dir: DataDir = None,
    db: Db = None, json_out: Json = False, verbose: Verbose = False,
) -> None:
    """List groups of near-identical images (copies, re-encodes, resizes) in a collection."""
    setup_logging(verbose)
    with handle_errors():
        with open_engine(collection, data_dir, db, "cpu") as engine:
            groups = engine.near_duplicates(threshold)
        if json_out:
            echo_json([[h.to_dict() for h in g] for g in groups])
            return
        if not groups:
            typer.echo(f"No near duplicates at similarity >= {threshold}.")
        for n, group in enumerate(groups, 1):
            typer.echo(f"group {n} ({len(group)} images)")
            for hit in group:
                typer.echo(f"  {hit.score:.4f}  {hit.path}")
