"""Stages that look at the hits closely: reranking, captions, answers, zero-shot classification and tags.

- Rerankers share one verb, ``rank(query, candidates, top_k) -> [(id, score)]`` (the
  :class:`Reranker` protocol): the in-house cross-attention ITM model (:mod:`.models.itm`, shipped as
  ``itm``) and BLIP's ITM head (:mod:`.models.vlm`). Their score is a match probability.
- Captions and answers are cached in the store per (image content, task, model, question): an
  unchanged image is never run through the same model twice.
- Zero-shot classification uses the collection's dual encoder (:mod:`.zeroshot`); tags computed from
  the stored image vectors become a filter field (``tag = cat``) and keyword text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import ConfigError, QueryError
from .store import content_hash, text_hash

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Hit, SearchEngine
    from .store import Store

__all__ = ["Reranker", "load_reranker", "rerank_spec", "caption_spec", "vqa_spec", "ITM_PRESET_DIR",
           "generate_cached", "TagReport", "tag_collection", "read_labels"]

#: The in-house ITM reranker trained by ``searchengine train --itm`` and shipped with the package.
ITM_PRESET = "itm"
ITM_PRESET_DIR = Path(__file__).parent / "models" / "itm_lite"
DEFAULT_CAPTION_MODEL = "Salesforce/blip-image-captioning-base"
DEFAULT_VQA_MODEL = "Salesforce/blip-vqa-base"


@runtime_checkable
class Reranker(Protocol):
    """A second stage: scores each candidate ``(id, image or path)`` against the query text."""

    spec: str

    def rank(self, query: str, candidates: Sequence[tuple[int, Any]],
             top_k: int | None = None) -> list[tuple[int, float]]: ...


def rerank_spec(spec: str | None = None) -> str:
    return spec or os.environ.get("SEARCHENGINE_RERANK_MODEL") or ITM_PRESET


def caption_spec(spec: str | None = None) -> str:
    return spec or os.environ.get("SEARCHENGINE_CAPTION_MODEL") or DEFAULT_CAPTION_MODEL


def vqa_spec(spec: str | None = None) -> str:
    return spec or os.environ.get("SEARCHENGINE_VQA_MODEL") or DEFAULT_VQA_MODEL


def load_reranker(spec: str | None = None, device: str = "auto") -> Reranker:
    """``itm`` (the shipped in-house model), an ITM folder from ``train --itm``, or a BLIP ITM model."""
    from .models.itm import is_itm_dir, load_itm

    spec = rerank_spec(spec)
    if spec == ITM_PRESET:
        if not is_itm_dir(ITM_PRESET_DIR):
            from .errors import ModelLoadError

            raise ModelLoadError("this installation ships no trained reranker; pass --rerank-model: a folder from "
                                 "`searchengine train --itm`, or a BLIP ITM model (a Hugging Face id such as "
                                 "Salesforce/blip-itm-base-coco, or a save_pretrained folder)")
        return load_itm(str(ITM_PRESET_DIR), device)
    folder = Path(spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec).expanduser()
    if is_itm_dir(folder):
        return load_itm(str(folder), device)
    from .models.vlm import load_vlm

    return load_vlm(spec, "itm", device)


def rerank_hits(reranker: Reranker, query: str, hits: "list[Hit]") -> "list[Hit]":
    """``hits`` reordered by the reranker; ``score`` becomes its probability, ``first_score`` keeps
    the first stage's."""
    from dataclasses import replace

    if not query or not query.strip():
        raise QueryError("reranking compares the query's words with each hit: give a text query")
    if not hits:
        return []
    by_id = {h.id: h for h in hits}
    ranked = reranker.rank(query, [(h.id, h.path) for h in hits])
    return [replace(by_id[i], score=score, first_score=by_id[i].score) for i, score in ranked]


# -- cached generation ----------------------------------------------------------------------------
def image_key(image: Any) -> str:
    """The content hash of an image given as a path, bytes or a PIL image."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return content_hash(f"{image.mode}{image.size}".encode() + image.tobytes())
    if isinstance(image, (bytes, bytearray)):
        return content_hash(bytes(image))
    try:
        return content_hash(Path(image).read_bytes())
    except OSError as exc:
        raise QueryError(f"cannot read the image {image}: {exc.strerror or exc}") from exc


def generate_cached(store: "Store | None", task: str, model: str, question: str, images: Sequence[Any],
                    run: Callable[[list[Any]], list[str]], keys: Sequence[str] | None = None) -> list[str]:
    """One output per image: from the store's cache, else from ``run`` (called once, on the
    missing images only, and its outputs stored)."""
    keys = list(keys) if keys is not None else [image_key(im) for im in images]
    known = store.generated_texts(task, model, question, keys) if store is not None else {}
    missing = list(dict.fromkeys(k for k in keys if k not in known))
    if missing:
        first = {k: images[keys.index(k)] for k in missing}
        made = dict(zip(missing, run([_readable(first[k]) for k in missing])))
        if store is not None:
            store.put_generated(task, model, question, made)
        known = {**known, **made}
    return [known[k] for k in keys]


def _readable(image: Any) -> Any:
    """Bytes become a PIL image; paths and PIL images pass."""
    if isinstance(image, (bytes, bytearray)):
        import io

        from .imaging import safe_open

        return safe_open(io.BytesIO(bytes(image)))
    return image


def caption_collection(engine: "SearchEngine", captioner: Any, progress: Callable[[int], None] | None = None,
                       chunk: int = 64) -> int:
    """Caption the collection's images that have no searchable generated caption; returns how many."""
    store, cid = engine.store, engine.collection.id
    store.set_caption_model(cid, captioner.spec)
    todo = store.images_without_generated(cid)
    done = 0
    for start in range(0, len(todo), chunk):
        rows = todo[start : start + chunk]
        texts = generate_cached(store, "caption", captioner.spec, "", [r.path for r in rows],
                                lambda images: captioner.generate(images), keys=[r.content_hash for r in rows])
        captions = {r.id: t for r, t in zip(rows, texts) if t.strip()}
        unique = sorted(set(captions.values()))
        vectors = dict(zip([text_hash(t) for t in unique], engine.encoder.encode_texts(unique))) if unique else {}
        store.write_generated(cid, captions, vectors)
        done += len(rows)
        if progress is not None:
            progress(len(rows))
    engine.sync_texts()
    return done


# -- zero-shot ------------------------------------------------------------------------------------
def read_labels(source: str | os.PathLike | Sequence[str]) -> list[str]:
    """Labels from a list, a comma-separated string, or a file with one label per line (``#`` comments)."""
    if isinstance(source, (list, tuple)):
        labels = [str(x).strip() for x in source]
    elif os.path.isfile(source):
        lines = Path(source).read_text(encoding="utf-8").splitlines()
        labels = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    else:
        labels = [x.strip() for x in str(source).split(",")]
    labels = list(dict.fromkeys(x for x in labels if x))
    if len(labels) < 2:
        raise QueryError("give at least two labels (probabilities are relative to the other labels)")
    return labels


def classify_vectors(encoder: Any, vectors: np.ndarray, labels: Sequence[str],
                     templates: Sequence[str] | None = None) -> np.ndarray:
    """(n, labels) probabilities, each row summing to 1."""
    from .zeroshot import TEMPLATES, class_embeddings, label_probabilities

    classes = class_embeddings(encoder, list(labels), templates or TEMPLATES)
    return label_probabilities(vectors, classes)


@dataclass
class TagReport:
    images: int
    tags: int
    per_label: dict[str, int]


def tag_collection(engine: "SearchEngine", labels: Sequence[str], *, threshold: float = 0.3, top: int = 3,
                   templates: Sequence[str] | None = None) -> TagReport:
    """Tag every image with the labels whose zero-shot probability is at least ``threshold`` (at most
    ``top`` per image), from the stored image vectors; replaces the collection's previous tags."""
    if not 0 < threshold <= 1 or top < 1:
        raise ConfigError("need 0 < threshold <= 1 and top >= 1")
    ids, vecs = engine.store.all_vectors(engine.collection.id)
    rows: list[tuple[int, str, float]] = []
    per_label = {lab: 0 for lab in labels}
    for start in range(0, len(ids), 8192):
        probs = classify_vectors(engine.encoder, vecs[start : start + 8192], labels, templates)
        for image_id, p in zip(ids[start : start + 8192], probs):
            for j in np.argsort(-p, kind="stable")[:top]:
                if p[j] >= threshold:
                    rows.append((int(image_id), labels[j], float(p[j])))
                    per_label[labels[j]] += 1
    engine.store.replace_tags(engine.collection.id, rows)
    return TagReport(images=len(ids), tags=len(rows), per_label=per_label)
