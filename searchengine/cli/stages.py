"""CLI commands for the stages that look closer at images: ``caption``, ``ask``, ``classify``, ``tag``,
and ``index --caption``'s pass over a collection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import Settings
from ..engine import SearchEngine
from ..errors import CollectionNotFoundError, ImageDecodeError, QueryError
from ..imaging import safe_open
from ..models.clip import load_default_encoder
from ..models.loaded import LoadedModels
from ..stages import StageRunner, classify_vectors, read_labels
from ..store import Store
from .options import (
    Collection,
    DataDir,
    Db,
    Device,
    Json,
    ProgressBar,
    Verbose,
    echo_json,
    handle_errors,
    open_engine,
    setup_logging,
)

__all__ = ["caption", "ask", "classify", "tag", "caption_collection"]

CaptionModel = Annotated[Optional[str], typer.Option(
    "--caption-model", envvar="SEARCHENGINE_CAPTION_MODEL", show_default=False,
    help="BLIP captioning model: a Hugging Face id or a save_pretrained folder "
         "[default: Salesforce/blip-image-captioning-base].")]
VqaModel = Annotated[Optional[str], typer.Option(
    "--vqa-model", envvar="SEARCHENGINE_VQA_MODEL", show_default=False,
    help="BLIP VQA model: a Hugging Face id or a save_pretrained folder [default: Salesforce/blip-vqa-base].")]
Images = Annotated[list[Path], typer.Argument(help="Image files.", show_default=False)]


def _store(collection: str, data_dir: Optional[Path], db: Optional[str], device: str) -> SearchEngine | None:
    """The collection when it exists (its model, its cache), else the store alone (cache only)."""
    try:
        return open_engine(collection, data_dir, db, device)
    except CollectionNotFoundError:
        return None


def _generate(kind: str, images: list[Path], question: str | None, model: Optional[str], collection: str,
              data_dir: Optional[Path], db: Optional[str], device: str) -> list[str]:
    """Captions (``kind`` "caption") or answers to ``question`` for image files, cached in the store."""
    for image in images:
        if not image.is_file():
            raise QueryError(f"no such image file: {image}")
    settings = Settings.from_env(collection=collection, data_dir=data_dir, db_url=db, device=device)
    store = Store(settings.database_url)
    try:
        stages = StageRunner(store, LoadedModels(), settings.stage_models, settings.device)
        return stages.caption(images, model) if kind == "caption" else stages.ask(images, question or "", model)
    finally:
        store.close()


def caption(
    images: Images, model: CaptionModel = None, collection: Collection = "default", data_dir: DataDir = None,
    db: Db = None, device: Device = "auto", json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Describe images in words (BLIP captioning). Captions are cached per image content and model."""
    setup_logging(verbose)
    with handle_errors():
        texts = _generate("caption", images, None, model, collection, data_dir, db, device)
        if json_out:
            echo_json([{"path": str(p), "caption": t} for p, t in zip(images, texts)])
            return
        for path, text in zip(images, texts):
            typer.echo(f"{path}: {text}" if len(images) > 1 else text)


def ask(
    image: Annotated[Path, typer.Argument(help="Image file.", show_default=False)],
    question: Annotated[str, typer.Argument(help='The question, e.g. "what colour is the car?"', show_default=False)],
    model: VqaModel = None, collection: Collection = "default", data_dir: DataDir = None, db: Db = None,
    device: Device = "auto", json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Answer a question about an image (BLIP visual question answering); answers are cached."""
    setup_logging(verbose)
    with handle_errors():
        if not question.strip():
            raise QueryError("empty question")
        answer = _generate("answer", [image], question, model, collection, data_dir, db, device)[0]
        if json_out:
            echo_json({"path": str(image), "question": question, "answer": answer})
            return
        typer.echo(answer)


Labels = Annotated[str, typer.Option(
    "--labels", "-l", show_default=False,
    help="Labels: comma-separated (cat,dog,bird) or a file with one label per line.")]
ClassifyModel = Annotated[Optional[str], typer.Option(
    "--model", "-m", envvar="SEARCHENGINE_MODEL", show_default=False,
    help="Dual encoder [default: the collection's model when the collection exists, else the default].")]


def classify(
    images: Images, labels: Labels,
    top: Annotated[int, typer.Option("--top", min=1, help="Labels shown per image.")] = 3,
    model: ClassifyModel = None,
    collection: Collection = "default", data_dir: DataDir = None, db: Db = None, device: Device = "auto",
    json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Zero-shot classification with the dual encoder (prompt templates, ensembled).

    Probabilities sum to 1 over the given labels: they rank the labels against each other and
    are not calibrated (an image of none of them still gets probabilities that sum to 1)."""
    setup_logging(verbose)
    with handle_errors():
        names = read_labels(labels)
        probs = _label_probabilities(images, names, model, collection, data_dir, db, device)
        results = [sorted(zip(names, map(float, p)), key=lambda x: -x[1])[:top] for p in probs]
        if json_out:
            echo_json([{"path": str(p), "labels": [{"label": lab, "probability": pr} for lab, pr in r]}
                       for p, r in zip(images, results)])
            return
        for path, r in zip(images, results):
            typer.echo(f"{path}: " + ", ".join(f"{lab} {pr:.3f}" for lab, pr in r))


def _label_probabilities(images: list[Path], names: list[str], model: Optional[str], collection: str,
                         data_dir: Optional[Path], db: Optional[str], device: str) -> Any:
    """Per image, the probability of each label under the collection's encoder (or ``model``'s)."""
    engine = None if model else _store(collection, data_dir, db, device)
    try:
        encoder = engine.encoder if engine is not None else load_default_encoder(model, device)
        try:
            pil = [safe_open(p, draft_size=encoder.image_size) for p in images]
        except ImageDecodeError as exc:
            raise QueryError(str(exc)) from exc
        return classify_vectors(encoder, encoder.encode_images(pil), names)
    finally:
        if engine is not None:
            engine.close()


def tag(
    labels: Labels,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Tag an image with a label when its "
                                                                    "probability is at least this.")] = 0.3,
    top: Annotated[int, typer.Option("--top", min=1, help="At most this many tags per image.")] = 3,
    collection: Collection = "default", data_dir: DataDir = None, db: Db = None, device: Device = "auto",
    json_out: Json = False, verbose: Verbose = False,
) -> None:
    """Tag the whole collection by zero-shot classification of its stored vectors (no image is read
    again); replaces earlier tags. Filter on them with --filter tag=LABEL or --where "tag = 'LABEL'"."""
    setup_logging(verbose)
    with handle_errors():
        with open_engine(collection, data_dir, db, device, writable=True) as engine:  # tags replace the old ones
            report = engine.tag(read_labels(labels), threshold=threshold, top=top)
        if json_out:
            echo_json(vars(report))
            return
        typer.echo(f"{report.tags} tags on {report.images} images")
        for label, n in sorted(report.per_label.items(), key=lambda x: -x[1]):
            typer.echo(f"  {label:<24} {n}")


def caption_collection(engine: SearchEngine, model: Optional[str], show: bool) -> int:
    """``index --caption``: caption the images that have no generated caption yet."""
    bar = ProgressBar(enabled=show, desc="Captioning")
    todo = engine.count_uncaptioned()
    bar.start(todo)
    try:
        return engine.caption_collection(model, progress=bar.advance)
    finally:
        bar.close()
