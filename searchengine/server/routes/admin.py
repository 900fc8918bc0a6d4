"""Write routes, run as background jobs (index, import, remove), and the job list to poll them."""

from __future__ import annotations

from typing import Any, Callable

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from indexer import import_catalog, index_folder, remove_paths
from indexer.catalog import read_catalog
from indexer.scan import normalize_roots

from ..schemas import ImportBody, IndexBody, RemoveBody
from .deps import Admin, config_of

__all__ = ["router"]

router = APIRouter(tags=["admin"], dependencies=[Admin])


def _submit(request: Request, kind: str, params: dict, run: Callable) -> JSONResponse:
    job = request.app.state.jobs.submit(kind, params, run)
    return JSONResponse(job.to_dict(), status_code=202, headers={"Location": f"/api/jobs/{job.id}"})


def _check_paths(request: Request, paths: list[str]) -> None:
    max_paths = config_of(request).max_paths
    if len(paths) > max_paths:
        raise HTTPException(422, f"at most {max_paths} paths per request")
    if any(not p or "\x00" in p or len(p) > 4096 for p in paths):
        raise HTTPException(422, "paths must be non-empty, at most 4096 characters, without NUL")


@router.post("/api/admin/index", status_code=202)
def index(request: Request, body: IndexBody) -> JSONResponse:
    """Index folders or files on the server (incrementally) as a background job; poll ``/api/jobs/{id}``."""
    _check_paths(request, body.paths)
    roots = normalize_roots(body.paths)  # a wrong path is refused now, not in the job
    return _submit(request, "index", body.model_dump(), lambda engine, progress: index_folder(
        roots, engine=engine, ocr=body.ocr, retry_errors=body.retry_errors, progress=progress))


@router.post("/api/admin/import", status_code=202)
def import_(request: Request, body: ImportBody) -> JSONResponse:
    """Import a product catalog file on the server as a background job."""
    catalog = read_catalog(body.catalog)  # an unreadable catalog is refused now
    return _submit(request, "import", body.model_dump(), lambda engine, progress: import_catalog(
        catalog, engine=engine, prune=body.prune, refresh=body.refresh, progress=progress))


@router.post("/api/admin/remove", status_code=202)
def remove(request: Request, body: RemoveBody) -> JSONResponse:
    """Remove the images at or below these paths as a background job."""
    _check_paths(request, body.paths)
    return _submit(request, "remove", body.model_dump(),
                   lambda engine, progress: remove_paths(body.paths, engine=engine))


@router.get("/api/jobs")
def jobs(request: Request) -> dict[str, Any]:
    """Recent jobs, newest first."""
    return {"jobs": [j.to_dict() for j in request.app.state.jobs.all()]}


@router.get("/api/jobs/{job_id}")
def job(request: Request, job_id: int) -> dict[str, Any]:
    """A job's state and progress (``done`` of ``total`` files), then its report or error."""
    found = request.app.state.jobs.get(job_id)
    if found is None:
        raise HTTPException(404, f"no job {job_id}")
    return found.to_dict()
