"""The stages of one open collection: rerankers, captioners and answerers loaded once (through the
shared :class:`~searchengine.models.loaded.LoadedModels`), captions and answers cached in the store."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence, TypeVar

from ..config import StageModels
from ..errors import QueryError
from ..models.loaded import LoadedModels
from ..models.registry import load_stage
from ..store import Store
from .generate import generate_cached
from .rerank import Reranker
from .specs import caption_spec, rerank_spec, vqa_spec

__all__ = ["StageRunner"]

HitT = TypeVar("HitT")


class StageRunner:
    """Runs the optional stages for one collection with the configured :class:`StageModels`."""

    def __init__(self, store: Store, models: LoadedModels, configured: StageModels, device: str) -> None:
        self.store = store
        self.models = models
        self.configured = configured
        self.device = device

    def reranker(self, spec: str | None = None) -> Reranker:
        """The reranker named ``spec``, else the configured one (none ships: see :func:`rerank_spec`)."""
        name = rerank_spec(spec, self.configured)
        return self.models.stage("rerank", name, lambda: load_stage("rerank", name, self.device))

    def captioner(self, spec: str | None = None) -> Any:
        name = caption_spec(spec, self.configured)
        return self.models.stage("caption", name, lambda: load_stage("caption", name, self.device))

    def answerer(self, spec: str | None = None) -> Any:
        name = vqa_spec(spec, self.configured)
        return self.models.stage("vqa", name, lambda: load_stage("vqa", name, self.device))

    def caption(self, images: Sequence[Any], model: str | None = None,
                keys: Sequence[str] | None = None) -> list[str]:
        """A caption for each image (a path, bytes or PIL image), cached per content and model."""
        captioner = self.captioner(model)
        return generate_cached(self.store, "caption", captioner.spec, "", list(images), captioner.generate, keys)

    def ask(self, images: Sequence[Any], question: str, model: str | None = None,
            keys: Sequence[str] | None = None) -> list[str]:
        """An answer to ``question`` for each image, cached per (content, question, model)."""
        if not question or not question.strip():
            raise QueryError("empty question")
        answerer, asked = self.answerer(model), question.strip()
        return generate_cached(self.store, "answer", answerer.spec, asked, list(images),
                               lambda ims: answerer.predict_answers(ims, asked), keys)

    def annotate(self, collection_id: int, hits: list[HitT], caption: bool | str, ask: str | None) -> list[HitT]:
        """``hits`` with a generated caption (``caption``: True or a model spec) and/or an answer to ``ask``."""
        if not hits:
            return hits
        rows = self.store.images_by_ids(collection_id, [h.id for h in hits])  # type: ignore[attr-defined]
        keys = [rows[h.id].content_hash for h in hits]  # type: ignore[attr-defined]
        paths = [h.path for h in hits]  # type: ignore[attr-defined]
        if caption:
            texts = self.caption(paths, caption if isinstance(caption, str) else None, keys)
            hits = [replace(h, generated_caption=t) for h, t in zip(hits, texts)]  # type: ignore[type-var]
        if ask is not None:
            texts = self.ask(paths, ask, None, keys)
            hits = [replace(h, answer=t) for h, t in zip(hits, texts)]  # type: ignore[type-var]
        return hits
