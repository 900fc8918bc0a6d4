"""The web page at ``/`` (its scripts and styles are mounted from :data:`STATIC` at ``/static``)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from .deps import NOSNIFF

__all__ = ["router", "STATIC"]

STATIC = Path(__file__).parent.parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={**NOSNIFF, "Cache-Control": "no-cache"})
