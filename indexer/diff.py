"""Diff a scan against the store: what is unchanged, what must be looked at, what vanished."""

from __future__ import annotations

from dataclasses import dataclass, field

from searchengine.store import FileErrorRecord, ImageRecord

from .scan import FileEntry, ScanResult

__all__ = ["Plan", "plan"]


@dataclass
class Plan:
    unchanged: int = 0
    #: new files, and files whose (size, mtime) changed: hashed, and decoded when needed
    candidates: list[FileEntry] = field(default_factory=list)
    #: rows under the roots, by path
    existing: dict[str, ImageRecord] = field(default_factory=dict)
    #: rows whose file is gone (unless a candidate turns out to be the same content, moved)
    vanished: list[ImageRecord] = field(default_factory=list)
    #: files with a recorded error and unchanged (size, mtime): not retried
    known_failures: int = 0
    #: error rows whose file is gone
    stale_errors: list[str] = field(default_factory=list)


def plan(scanned: ScanResult, rows: list[ImageRecord], errors: list[FileErrorRecord],
         retry_errors: bool = False, ocr: bool = False) -> Plan:
    """Compare scanned files with stored rows and recorded errors (both under the same roots).

    A file is unchanged when its size, mtime and sidecars are (and, with ``ocr``, its text was read).
    """
    result = Plan(existing={r.path: r for r in rows})
    failed = {e.path: e for e in errors}
    seen: set[str] = set()
    for entry in scanned.files:
        seen.add(entry.path)
        row = result.existing.get(entry.path)
        if (row is not None and row.size == entry.size and row.mtime == entry.mtime
                and row.sidecar_sig == entry.sidecar and not (ocr and row.ocr_text is None)):
            result.unchanged += 1
            continue
        err = failed.get(entry.path)
        if row is None and err is not None and not retry_errors and err.size == entry.size and err.mtime == entry.mtime:
            result.known_failures += 1
            continue
        result.candidates.append(entry)
    scan_error_paths = {p for p, _ in scanned.errors}
    unsure = tuple(p.rstrip("/") + "/" for p in scan_error_paths)  # unreadable now, maybe not gone
    result.vanished = [r for p, r in result.existing.items()
                       if p not in seen and p not in scan_error_paths and not p.startswith(unsure)]
    result.stale_errors = [p for p in failed if p not in seen and p not in scan_error_paths]
    return result
