"""Stages that look at the hits closely: reranking, captions, answers, zero-shot classification and tags.

- :mod:`.rerank`: the :class:`Reranker` verb ``rank(query, candidates, top_k)``, loading one by spec,
  hits reordered by its match probabilities.
- :mod:`.generate`: captions and answers cached in the store per (image content, task, model, question).
- :mod:`.zeroshot`: zero-shot classification with the collection's dual encoder, and tags.
- :mod:`.runner`: :class:`StageRunner`, the stages of one open collection (each model loaded once).
- :mod:`.specs`: which model each stage runs (the spec given, the configured
  :class:`~searchengine.config.StageModels`, or the preset).

Stages never import the engine; what they need is passed in.
"""

from .generate import caption_images, generate_cached, image_key
from .rerank import Reranker, load_reranker, rerank_hits
from .runner import StageRunner
from .specs import DEFAULT_CAPTION_MODEL, DEFAULT_VQA_MODEL, caption_spec, rerank_spec, vqa_spec
from .zeroshot import (
                       TEMPLATES,
                       TagReport,
                       class_embeddings,
                       classify_vectors,
                       label_probabilities,
                       read_labels,
                       tag_images,
)

__all__ = ["StageRunner", "Reranker", "load_reranker", "rerank_hits", "rerank_spec", "caption_spec", "vqa_spec",
           "DEFAULT_CAPTION_MODEL", "DEFAULT_VQA_MODEL", "generate_cached", "image_key", "caption_images",
           "TEMPLATES", "class_embeddings", "label_probabilities", "read_labels",
           "classify_vectors", "TagReport", "tag_images"]
