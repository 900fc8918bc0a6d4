"""CLIP zero-shot classification: prompt templates, prompt ensembling, label probabilities.

Probabilities are a softmax over the given labels only: they say which label fits best
*relative to the others*, and are not calibrated confidences.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import QueryError

if TYPE_CHECKING:  # pragma: no cover
    from .models.clip import ClipEncoder

__all__ = ["TEMPLATES", "class_embeddings", "label_probabilities"]

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
