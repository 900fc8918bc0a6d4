"""CLIP zero-shot classification with the collection's dual encoder: prompt templates, prompt
ensembling, label probabilities, and tags for a whole collection from its stored image vectors
(a filter field, ``tag = cat``, and keyword text).

Probabilities are a softmax over the given labels only: they say which label fits best
*relative to the others*, and are not calibrated confidences.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import ConfigError, QueryError

if TYPE_CHECKING:  # pragma: no cover
    from ..models.clip import ClipEncoder
    from ..store import Store

__all__ = ["TEMPLATES", "class_embeddings", "label_probabilities", "read_labels", "classify_vectors", "TagReport",
           "tag_images"]

#: Prompt templates for ensembling (a subset of CLIP's ImageNet templates, for any kind of picture).
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a drawing of a {}.",
    "a rendering of a {}.",
    "a black and white photo of a {}.",
    "a cropped photo of a {}.",
    "itap of a {}.",
)


def class_embeddings(encoder: "ClipEncoder", labels: Sequence[str],
                     templates: Sequence[str] = TEMPLATES) -> np.ndarray:
    """One L2-normalised vector per label: the mean of its normalised prompt embeddings."""
    if not labels:
        raise QueryError("no labels given")
    if not templates or any("{}" not in t for t in templates):
        raise QueryError("every prompt template needs a '{}' where the label goes")
    prompts = [t.format(label) for label in labels for t in templates]
    vecs = encoder.encode_texts(prompts).reshape(len(labels), len(templates), -1).mean(axis=1)
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


def label_probabilities(image_vectors: np.ndarray, class_vectors: np.ndarray, scale: float = 100.0) -> np.ndarray:
    """Softmax over labels of ``scale`` * cosine similarity: (n_images, n_labels), rows sum to 1."""
    logits = scale * (np.asarray(image_vectors, np.float32) @ np.asarray(class_vectors, np.float32).T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


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


def classify_vectors(encoder: "ClipEncoder", vectors: np.ndarray, labels: Sequence[str],
                     templates: Sequence[str] | None = None) -> np.ndarray:
    """(n, labels) probabilities, each row summing to 1."""
    classes = class_embeddings(encoder, list(labels), templates or TEMPLATES)
    return label_probabilities(vectors, classes)


@dataclass
class TagReport:
    images: int
    tags: int
    per_label: dict[str, int]


def tag_images(store: "Store", collection_id: int, encoder: "ClipEncoder", labels: Sequence[str], *,
               threshold: float = 0.3, top: int = 3, templates: Sequence[str] | None = None) -> TagReport:
    """Tag every image with the labels whose zero-shot probability is at least ``threshold`` (at most
    ``top`` per image), from the stored image vectors; replaces the collection's previous tags."""
    if not 0 < threshold <= 1 or top < 1:
        raise ConfigError("need 0 < threshold <= 1 and top >= 1")
    ids, vecs = store.all_vectors(collection_id)
    rows: list[tuple[int, str, float]] = []
    per_label = {lab: 0 for lab in labels}
    for start in range(0, len(ids), 8192):
        probs = classify_vectors(encoder, vecs[start : start + 8192], labels, templates)
        for image_id, p in zip(ids[start : start + 8192], probs):
            for j in np.argsort(-p, kind="stable")[:top]:
                if p[j] >= threshold:
                    rows.append((int(image_id), labels[j], float(p[j])))
                    per_label[labels[j]] += 1
    store.replace_tags(collection_id, rows)
    return TagReport(images=len(ids), tags=len(rows), per_label=per_label)
