"""Search routes: text (GET and POST), by image, image->text, zero-shot classification, and facets."""

from __future__ import annotations

import time
from typing import Annotated, Any, Optional

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile

from ..schemas import SearchParams
from .deps import MAX_ID, Read, check_limits, config_of, engine_of, hits_response, offered, query_image

__all__ = ["router"]

router = APIRouter(dependencies=[Read])


def _search(request: Request, p: SearchParams) -> dict[str, Any]:
    config = config_of(request)
    check_limits(config, k=p.k, text=(p.q or "") + (p.query or ""))
    offered(config, ask=p.ask is not None, caption=p.caption, rerank=p.rerank)
    if not (p.q or p.query):
        raise HTTPException(422, "give q (words) or query (a composed query)")
    started = time.perf_counter()
    hits = engine_of(request).search(
        p.q, query=p.query, filters=p.filter, k=p.k, mode=p.mode, keyword_weight=p.keyword_weight,
        min_score=p.min_score, sort=p.sort, dedup=p.dedup, group=p.group, rerank=p.rerank,
        rerank_top=p.rerank_top, caption=p.caption, ask=p.ask)
    return hits_response(hits, started)


@router.get("/api/facets", tags=["search"])
def facets(request: Request) -> dict[str, Any]:
    """Attribute names with their most frequent values (for filter menus)."""
    engine = engine_of(request)
    return {k: [{"value": v, "count": n} for v, n in vs] for k, vs in engine.facets().items()}


@router.get("/api/search", tags=["search"])
def search_get(request: Request, params: Annotated[SearchParams, Query()]) -> dict[str, Any]:
    """Text search (words, a composed query, filters, keyword/hybrid modes, product grouping)."""
    return _search(request, params)


@router.post("/api/search", tags=["search"])
def search_post(request: Request, params: SearchParams) -> dict[str, Any]:
    """The same search with a JSON body (what a shop backend sends)."""
    return _search(request, params)


@router.post("/api/search/image", tags=["search"])
def search_image(request: Request, file: Annotated[Optional[UploadFile], File()] = None,
                 id: Annotated[Optional[int], Form(ge=0, le=MAX_ID)] = None,
                 q: Annotated[Optional[str], Form(max_length=4000)] = None,
                 k: Annotated[int, Form(ge=1, le=1000)] = 10,
                 filter: Annotated[Optional[str], Form(max_length=4000)] = None,
                 group: Annotated[bool, Form()] = True) -> dict[str, Any]:
    """Images like an uploaded image (multipart ``file``) or an indexed one (``id``); ``q`` adds words."""
    check_limits(config_of(request), k=k, text=q)
    engine = engine_of(request)
    image = query_image(request, file, id, engine)
    started = time.perf_counter()
    hits = engine.search(q or None, image, filters=filter, k=k, group=group)
    return hits_response(hits, started)


@router.post("/api/image-to-text", tags=["search"])
def image_to_text(request: Request, file: Annotated[Optional[UploadFile], File()] = None,
                  id: Annotated[Optional[int], Form(ge=0, le=MAX_ID)] = None,
                  k: Annotated[int, Form(ge=1, le=1000)] = 10) -> dict[str, Any]:
    """Captions and product titles that fit an uploaded or indexed image."""
    check_limits(config_of(request), k=k)
    engine = engine_of(request)
    if id is not None and file is None:
        texts = engine.search_texts(vector=engine.image_vector(id), k=k)
    else:
        texts = engine.search_texts(image=query_image(request, file, id, engine), k=k)
    return {"texts": [t.to_dict() for t in texts]}


@router.post("/api/classify", tags=["zero-shot"])
def classify(request: Request, labels: Annotated[str, Form(min_length=1, max_length=4000)],
             file: Annotated[Optional[UploadFile], File()] = None,
             id: Annotated[Optional[int], Form(ge=0, le=MAX_ID)] = None) -> dict[str, Any]:
    """Zero-shot label probabilities (relative: they sum to 1 over the labels, not calibrated)."""
    max_labels = config_of(request).max_labels
    names = [x.strip() for x in labels.split(",") if x.strip()]
    if not 2 <= len(names) <= max_labels:
        raise HTTPException(422, f"give 2 to {max_labels} comma-separated labels")
    engine = engine_of(request)
    ranked = engine.classify([query_image(request, file, id, engine)], names)[0]
    return {"labels": [{"label": lab, "probability": p} for lab, p in ranked]}
