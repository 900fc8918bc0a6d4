"""Routes about one indexed image: its record, similar images, thumbnail, original, texts, caption, answers."""

from __future__ import annotations

from typing import Annotated, Any, Optional

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response

from ..media import original_file, thumbnail_file
from ..schemas import AskBody
from .deps import NOSNIFF, Read, check_limits, config_of, engine_of, hit_dict, offered, parse_image_id

__all__ = ["router"]

router = APIRouter(tags=["images"], dependencies=[Read])


@router.get("/api/images/{image_id}")
def image(request: Request, image_id: str) -> dict[str, Any]:
    """Everything stored about one image: caption, tags, text in it, EXIF date, product, attributes."""
    out = hit_dict(engine_of(request).image(parse_image_id(image_id)))
    out.pop("score", None)
    return out


@router.get("/api/images/{image_id}/similar")
def similar(request: Request, image_id: str, k: Annotated[int, Query(ge=1, le=1000)] = 10,
            filter: Annotated[Optional[str], Query(max_length=4000)] = None) -> dict[str, Any]:
    """Images most like an indexed image (itself left out)."""
    check_limits(config_of(request), k=k)
    hits = engine_of(request).similar(parse_image_id(image_id), k, filters=filter, group=False)
    return {"hits": [hit_dict(h) for h in hits]}


@router.get("/api/images/{image_id}/thumbnail", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}})
def thumbnail(request: Request, image_id: str, size: Annotated[int, Query(ge=1, le=4096)] = 256) -> Response:
    """A JPEG thumbnail (longest side ``size``: one of the server's sizes), cached on disk."""
    sizes = config_of(request).thumb_sizes
    if size not in sizes:
        raise HTTPException(422, f"size must be one of {list(sizes)}")
    path = thumbnail_file(engine_of(request), parse_image_id(image_id), size)
    return FileResponse(path, media_type="image/jpeg",
                        headers={**NOSNIFF, "Cache-Control": "private, max-age=86400"})


@router.get("/api/images/{image_id}/original", response_class=Response,
            responses={200: {"content": {"image/*": {}}}})
def original(request: Request, image_id: str) -> Response:
    """The original file, only from inside the collection's folders; never SVG."""
    path, kind = original_file(engine_of(request), parse_image_id(image_id))
    return FileResponse(path, media_type=kind,
                        headers={**NOSNIFF, "Content-Security-Policy": "default-src 'none'",
                                 "Cache-Control": "private, max-age=3600"})


@router.get("/api/images/{image_id}/texts")
def texts(request: Request, image_id: str, k: Annotated[int, Query(ge=1, le=1000)] = 10) -> dict[str, Any]:
    """Captions and titles nearest to an indexed image (image->text)."""
    check_limits(config_of(request), k=k)
    engine = engine_of(request)
    found = engine.search_texts(vector=engine.image_vector(parse_image_id(image_id)), k=k)
    return {"texts": [t.to_dict() for t in found]}


@router.post("/api/images/{image_id}/caption")
def caption(request: Request, image_id: str) -> dict[str, Any]:
    """A generated caption (cached per content and model; needs the vlm extra and a caption model)."""
    offered(config_of(request), caption=True)
    engine = engine_of(request)
    return {"caption": engine.caption([engine.image(parse_image_id(image_id)).path])[0]}


@router.post("/api/images/{image_id}/ask")
def ask(request: Request, image_id: str, body: AskBody) -> dict[str, Any]:
    """An answer to a question about the image (cached per content, question and model)."""
    offered(config_of(request), ask=True)
    engine = engine_of(request)
    return {"answer": engine.ask([engine.image(parse_image_id(image_id)).path], body.question)[0]}
