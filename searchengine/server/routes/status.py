"""Status routes: liveness, the collection's status, and what this server offers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from .deps import Read, config_of, engine_of

__all__ = ["router"]

router = APIRouter(tags=["status"])


@router.get("/api/health")
def health() -> dict[str, str]:
    """Liveness (no key needed)."""
    return {"status": "ok"}


@router.get("/api/status", dependencies=[Read])
def status(request: Request) -> dict[str, Any]:
    """The collection: model, counts, index type."""
    out = engine_of(request).status().to_dict()
    out.pop("data_dir", None)  # server paths stay on the server
    out.pop("database", None)
    return out


@router.get("/api/capabilities", dependencies=[Read])
def capabilities(request: Request) -> dict[str, Any]:
    """What this server offers, for clients that adapt (the web page shows the question box only with VQA)."""
    config = config_of(request)
    return {"vqa": config.vqa, "caption": config.caption, "rerank": config.rerank, "max_k": config.max_k,
            "max_upload_bytes": config.max_upload_bytes, "thumb_sizes": list(config.thumb_sizes)}
