"""Retrieval and zero-shot evaluation, run through the engine's real index and query path (the
pairs' images indexed into a throwaway collection by :mod:`indexer`)."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from indexer import run_files
from indexer.scan import FileEntry, ScanResult

from ..engine import SearchEngine
from ..errors import ConfigError
from ..hashing import content_hash
from ..imaging import safe_open
from ..index import VectorIndex
from ..models.clip import load_default_encoder
from ..stages.zeroshot import TEMPLATES, class_embeddings
from .datasets import Pair
from .metrics import caption_key, distinct_owners, recall_at

__all__ = ["RetrievalReport", "ZeroShotReport", "evaluate_retrieval", "evaluate_zeroshot", "recall_at",
           "distinct_owners"]


@dataclass
class RetrievalReport:
    model: str
    images: int
    text_queries: int
    text_to_image: dict[int, float]
    image_to_text: dict[int, float]
    seconds: float
    failed_images: int = 0
    #: ``rerank``: text->image recall after reranking the first stage's top ``rerank_top``
    reranked_text_to_image: dict[int, float] | None = None
    rerank_model: str | None = None
    rerank_top: int | None = None
    rerank_ms_per_query: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ZeroShotReport:
    model: str
    images: int
    classes: int
    top1: float
    top5: float
    templates: int
    seconds: float
    per_class_top1: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_retrieval(pairs: Sequence[Pair], *, model: str | None, device: str = "auto", ks: Sequence[int] = (1, 5, 10),
                       all_captions: bool = False, workers: int | None = None, rerank: str | None = None,
                       rerank_top: int = 20) -> RetrievalReport:
    """Index the pairs' images into a throwaway collection, then query it.

    text->image: each pair's first caption (every caption with ``all_captions``) must find the
    pair's image; image->text: each image must find one of its own captions among all captions
    (ranked by the best caption of each image). Copies of the same image, and images with a
    caption of the same text, are right answers too (:class:`_Answers`). ``rerank`` (a reranker
    spec, see :func:`searchengine.stages.load_reranker`): text->image again with the first stage's
    top ``rerank_top`` reranked.
    """
    pairs = [p for p in pairs if p.captions]
    if not pairs:
        raise ConfigError("nothing to evaluate: no image with a caption")
    started = time.perf_counter()
    kmax = max(ks)
    with tempfile.TemporaryDirectory(prefix="searchengine-eval-") as tmp:
        links = Path(tmp) / "images"
        scanned, by_path = _link_pairs(pairs, links)
        with SearchEngine.open("eval", data_dir=Path(tmp) / "home", model=model, device=device, create=True) as engine:
            if workers is not None:
                engine.settings = engine.settings.with_(workers=workers)
            report = run_files(engine, scanned, [], [])
            rows = engine.images_under([str(links)])
            row_pair = {r.id: by_path[r.path] for r in rows}
            answers = _Answers(pairs)
            t2i = _text_to_image(engine, pairs, row_pair, kmax, all_captions, answers)
            i2t = _image_to_text(engine, pairs, row_pair, kmax, answers)
            model = engine.collection.model_spec
            result = RetrievalReport(model=model, images=len(row_pair), text_queries=len(t2i[0]),
                                     text_to_image=recall_at(*t2i, ks), image_to_text=recall_at(*i2t, ks),
                                     seconds=0.0, failed_images=report.failed)
            if rerank is not None:
                _add_reranked(result, engine, rerank, max(rerank_top, kmax), pairs, row_pair, ks, all_captions,
                              answers)
    result.seconds = time.perf_counter() - started
    return result


def _link_pairs(pairs: Sequence[Pair], links: Path) -> tuple[ScanResult, dict[str, int]]:
    """One link per pair under ``links`` (an image may belong to several), as a scan's result for the
    indexer (a folder scan would refuse links that lead out of it); and each link's pair."""
    links.mkdir()
    by_path = {}
    scanned = ScanResult(roots=[str(links)])
    for n, pair in enumerate(pairs):
        link = links / f"{n:07d}{pair.image.suffix.lower()}"
        os.symlink(pair.image, link)
        by_path[str(link)] = n
        try:
            st = os.stat(link)
        except OSError as exc:
            scanned.errors.append((str(link), f"cannot stat file: {exc.strerror or exc}"))
            continue
        scanned.files.append(FileEntry(str(link), st.st_size, st.st_mtime))
    return scanned, by_path


def _add_reranked(result: RetrievalReport, engine: SearchEngine, rerank: str, top: int, pairs: Sequence[Pair],
                  row_pair: dict[int, int], ks: Sequence[int], all_captions: bool, answers: "_Answers") -> None:
    """Text->image recall again, with the first stage's ``top`` reranked by ``rerank``."""
    kmax = max(ks)
    reranker = engine.reranker(rerank)
    t0 = time.perf_counter()
    reranked = _text_to_image(engine, pairs, row_pair, kmax, all_captions, answers,
                              lambda text: engine.search(text=text, k=kmax, rerank=reranker, rerank_top=top))
    result.rerank_ms_per_query = 1000 * (time.perf_counter() - t0) / max(len(reranked[0]), 1)
    result.reranked_text_to_image = recall_at(*reranked, ks)
    result.rerank_model, result.rerank_top = reranker.spec, top


class _Answers:
    """Which pairs are correct answers: the same image bytes, or a caption with the same text.

    An image whose copy sits in another pair, and a caption such as "A Christmas tree." that
    describes two stamps, each have more than one right answer; all of them count.
    """

    def __init__(self, pairs: Sequence[Pair]) -> None:
        content = [content_hash(p.image.read_bytes()) for p in pairs]
        self.captions = [{caption_key(c) for c in p.captions} for p in pairs]
        self.by_content: dict[str, set[int]] = {}
        self.by_caption: dict[str, set[int]] = {}
        for n, key in enumerate(content):
            self.by_content.setdefault(key, set()).add(n)
            for c in self.captions[n]:
                self.by_caption.setdefault(c, set()).add(n)
        self.content = content

    def for_text(self, n: int, caption: str) -> set[int]:
        return self.by_content[self.content[n]] | self.by_caption[caption_key(caption)]

    def for_image(self, n: int) -> set[int]:
        out = set(self.by_content[self.content[n]])
        for c in self.captions[n]:
            out |= self.by_caption[c]
        return out


def _text_to_image(engine: SearchEngine, pairs: Sequence[Pair], row_pair: dict[int, int], kmax: int,
                   all_captions: bool, answers: _Answers, search: Callable[[str], list] | None = None,
                   ) -> tuple[list[list[int]], list[set[int]]]:
    """Each query's ranked pairs, by the vector index (or by ``search(text) -> hits``)."""
    queries = [(n, c) for n, p in enumerate(pairs) for c in (p.captions if all_captions else p.captions[:1])]
    if search is None:
        vecs = _encode_texts(engine.encoder, [c for _, c in queries])
        results = (engine.search_vector(vec, kmax) for vec in vecs)
    else:
        results = (search(c) for _, c in queries)
    ranked = []
    for hits in results:
        ranked.append([row_pair[h.id] for h in hits if h.id in row_pair])
    return ranked, [answers.for_text(n, c) for n, c in queries]


def _image_to_text(engine: SearchEngine, pairs: Sequence[Pair], row_pair: dict[int, int], kmax: int,
                   answers: _Answers) -> tuple[list[list[int]], list[set[int]]]:
    """Each image's ranked pairs, by its nearest captions (an image's captions count once)."""
    owner = [n for n, p in enumerate(pairs) for _ in p.captions]
    vecs = _encode_texts(engine.encoder, [c for p in pairs for c in p.captions])
    captions = VectorIndex.build("Flat", vecs.shape[1], np.arange(len(vecs), dtype=np.int64), vecs)
    ids = sorted(row_pair)
    image_vecs = engine.image_vectors(ids)
    _, found = captions.search(image_vecs, kmax * max(len(p.captions) for p in pairs))
    ranked = [distinct_owners(row, owner, kmax) for row in found]
    return ranked, [answers.for_image(row_pair[i]) for i in ids]


def _encode_texts(encoder: Any, texts: list[str], batch: int = 256) -> np.ndarray:
    return np.concatenate([encoder.encode_texts(texts[i : i + batch]) for i in range(0, len(texts), batch)])


def evaluate_zeroshot(items: Sequence[Pair], label_texts: dict[str, str], *, model: str | None, device: str = "auto",
                      templates: Sequence[str] = TEMPLATES, batch_size: int = 64) -> ZeroShotReport:
    """Top-1/top-5 accuracy of zero-shot classification with prompt ensembling."""
    started = time.perf_counter()
    encoder = load_default_encoder(model, device)
    model = encoder.spec
    labels = sorted(label_texts)
    classes = class_embeddings(encoder, [label_texts[lab] for lab in labels], templates)
    truth = np.array([labels.index(p.label) for p in items])
    scores = []
    for i in range(0, len(items), batch_size):
        images = [safe_open(p.image, draft_size=encoder.image_size) for p in items[i : i + batch_size]]
        scores.append(encoder.encode_images(images) @ classes.T)
    order = np.argsort(-np.concatenate(scores), axis=1)
    top1 = order[:, 0] == truth
    top5 = (order[:, :5] == truth[:, None]).any(axis=1)
    per_class = {lab: float(top1[truth == j].mean()) for j, lab in enumerate(labels) if (truth == j).any()}
    return ZeroShotReport(model=model, images=len(items), classes=len(labels), top1=float(top1.mean()),
                          top5=float(top5.mean()), templates=len(templates),
                          seconds=time.perf_counter() - started, per_class_top1=per_class)
