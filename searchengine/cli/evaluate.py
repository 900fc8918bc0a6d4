"""CLI commands ``eval retrieval`` (recall@k, optionally reranked) and ``eval zeroshot`` (top-1/top-5)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..stages.zeroshot import TEMPLATES
from ..training.datasets import load_labelled, load_pairs
from ..training.evaluate import evaluate_retrieval, evaluate_zeroshot
from .options import Device, Json, Verbose, echo_json, handle_errors, setup_logging

__all__ = ["EVAL_HELP", "eval_retrieval", "eval_zeroshot"]

EVAL_HELP = "Measure retrieval quality (recall@k) and zero-shot accuracy."

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", envvar="SEARCHENGINE_MODEL", show_default=False,
    help="Model spec to evaluate [default: ViT-B-32:laion2b_s34b_b79k, or lite offline].")]
PairsSource = Annotated[Path, typer.Argument(help="Manifest (.jsonl/.csv with image + captions) or a folder with "
                                                  "sidecar .txt captions.", show_default=False)]
Ks = Annotated[list[int], typer.Option("-k", help="Cut-offs for recall@k (repeat the option).")]
AllCaptions = Annotated[bool, typer.Option("--all-captions", help="Query with every caption, not only the first.")]
MaxCaptions = Annotated[Optional[int], typer.Option(
    "--max-captions", min=1, show_default=False, help="Use only each image's first N captions [default: all].")]
Rerank = Annotated[bool, typer.Option("--rerank", help="Also measure text->image with the top hits reranked "
                                                       "by a cross-attention ITM model.")]
RerankModel = Annotated[Optional[str], typer.Option(
    "--rerank-model", envvar="SEARCHENGINE_RERANK_MODEL", show_default=False,
    help="--rerank: a folder from `train --itm`, or a BLIP ITM model (Hugging Face id or save_pretrained "
         "folder); required with --rerank: no reranker ships.")]
RerankTop = Annotated[int, typer.Option("--rerank-top", min=1, help="--rerank: hits rescored per query.")]


def eval_retrieval(
    source: PairsSource, model: ModelOpt = None, k: Ks = [1, 5, 10],  # noqa: B006
    all_captions: AllCaptions = False, max_captions: MaxCaptions = None, rerank: Rerank = False,
    rerank_model: RerankModel = None, rerank_top: RerankTop = 20,
    device: Device = "auto", json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Text->image and image->text recall@k through a throwaway index (a query counts as found when
    one of its correct items is in the top k)."""
    setup_logging(verbose)
    with handle_errors():
        pairs = [replace(p, captions=p.captions[:max_captions]) for p in load_pairs(source)]
        report = evaluate_retrieval(pairs, model=model, device=device, ks=sorted(set(k)),
                                    all_captions=all_captions, rerank=(rerank_model or "") if rerank else None,
                                    rerank_top=rerank_top)
        if json_out:
            echo_json(report.to_dict())
            return
        _echo_retrieval(report)


def _echo_retrieval(report: Any) -> None:
    """``eval retrieval``'s table: one row of recall@k per direction (and the reranked row)."""
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


LabelledSource = Annotated[Path, typer.Argument(help="Folder of class folders (optional labels.json: folder -> label "
                                                     "text), or a manifest with a 'label' field.", show_default=False)]
Templates = Annotated[Optional[Path], typer.Option(
    "--templates", show_default=False,
    help="File with one prompt template a line, each with '{}' [default: built-in].")]


def eval_zeroshot(
    source: LabelledSource, model: ModelOpt = None, templates: Templates = None,
    device: Device = "auto", json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Zero-shot classification accuracy (top-1/top-5) with prompt ensembling, as in the CLIP paper."""
    setup_logging(verbose)
    with handle_errors():
        items, labels = load_labelled(source)
        prompts = TEMPLATES if templates is None else [t for t in templates.read_text().splitlines() if t.strip()]
        report = evaluate_zeroshot(items, labels, model=model, device=device, templates=prompts)
        if json_out:
            echo_json(report.to_dict())
            return
        typer.echo(f"{report.model}: {report.images} images, {report.classes} classes, {report.templates} templates, "
                   f"{report.seconds:.1f}s")
        typer.echo(f"top-1 {report.top1:.3f}   top-5 {report.top5:.3f}")
        for label, acc in report.per_class_top1.items():
            typer.echo(f"  {label:<24} {acc:.3f}")
