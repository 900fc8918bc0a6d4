"""Scan folders for image files: regular files with an image extension, recursively.

Symlinks (to files or folders) are followed only when their target lies inside one of the
roots being scanned (the server serves only such files); a symlink that leads out of the
roots is a scan error naming its target. Each real folder is visited once, so a symlink loop
ends; a file symlink loop is a "cannot stat" error. Hidden folders (``.thumbnails``, ``.git``...)
are skipped. Named pipes, sockets and devices with an image extension are never opened: each is a
scan error ("not a regular file (a named pipe): not read").
Folders that cannot be read, file names that are not valid UTF-8 and paths too long for the
system become scan errors, never a crash.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Iterable

from searchengine.errors import ConfigError
from searchengine.store import outermost

from .sidecar import SIDECAR_EXTENSIONS

__all__ = ["FileEntry", "ScanResult", "scan", "normalize_roots"]


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    mtime: float
    #: the size and mtime of its caption sidecars (photo.txt, photo.json), "" when it has none
    sidecar: str = ""


@dataclass
class ScanResult:
    roots: list[str]
    files: list[FileEntry] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, message)


def normalize_roots(roots: Iterable[str | os.PathLike]) -> list[str]:
    """Absolute, normalised, existing roots, without duplicates or roots inside other roots."""
    out: list[str] = []
    for root in roots:
        path = os.path.abspath(os.path.expanduser(os.fspath(root)))
        if not os.path.exists(path):
            raise ConfigError(f"no such file or folder: {path}")
        out.append(path)
    return outermost(out)


def _displayable(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def scan(roots: Iterable[str | os.PathLike], extensions: frozenset[str] | set[str]) -> ScanResult:
    """All image files below ``roots`` (a root may also be a single file), sorted by path."""
    result = ScanResult(roots=normalize_roots(roots))
    seen_dirs: set[tuple[int, int]] = set()
    found: dict[str, FileEntry] = {}
    inside = _Containment(result.roots)
    for root in result.roots:
        if os.path.isdir(root):
            _walk(root, extensions, seen_dirs, found, result.errors, inside)
        else:
            _add_file(root, extensions, found, result.errors, explicit=True)
    result.files = [found[p] for p in sorted(found)]
    return result


class _Containment:
    """Whether a path resolves (symlinks followed) to somewhere inside one of the roots."""

    def __init__(self, roots: list[str]) -> None:
        self.roots = [os.path.realpath(r) for r in roots]

    def target_outside(self, path: str) -> str | None:
        """The resolved target of ``path`` when it lies outside every root, else None."""
        real = os.path.realpath(path)
        if any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots):
            return None
        return real


def _walk(top: str, extensions, seen_dirs, found, errors, inside: _Containment) -> None:
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
        except OSError as exc:
            errors.append((_escaped(folder), f"cannot read folder: {exc.strerror or exc}"))
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            continue
        seen_dirs.add(key)
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            errors.append((_escaped(folder), f"cannot read folder: {exc.strerror or exc}"))
            continue
        sidecars = {e.name: e for e in entries if e.name.lower().endswith(SIDECAR_EXTENSIONS)}
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir and entry.name.startswith("."):
                continue
            if not is_dir and os.path.splitext(entry.name)[1].lower() not in extensions:
                continue
            outside = inside.target_outside(entry.path) if _is_symlink(entry) else None
            if outside is not None:
                errors.append((_escaped(entry.path), f"symlink to {_escaped(outside)}, outside the indexed folders: "
                                                     "not followed (index that folder itself to include it)"))
            elif is_dir:
                stack.append(entry.path)
            else:
                _add_file(entry.path, extensions, found, errors, sidecars=sidecars)


def _is_symlink(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return False


def sidecar_signature(path: str, sidecars: dict | None = None) -> str:
    """What changes when a caption sidecar of ``path`` is added, edited or removed."""
    folder, name = os.path.split(path)
    stem = os.path.splitext(name)[0]
    parts = []
    for ext in SIDECAR_EXTENSIONS:
        try:
            if sidecars is None:
                st = os.stat(os.path.join(folder, stem + ext))
            elif stem + ext in sidecars:
                st = sidecars[stem + ext].stat()
            else:
                continue
        except OSError:
            continue
        parts.append(f"{ext}:{st.st_size}:{st.st_mtime_ns}")
    return " ".join(parts)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "a special file"


def _add_file(path: str, extensions, found, errors, explicit: bool = False, sidecars: dict | None = None) -> None:
    ext = os.path.splitext(path)[1].lower()
    if ext not in extensions:
        if explicit:
            errors.append((_escaped(path), f"not an image file extension ({ext or 'none'})"))
        return
    if not _displayable(path):
        errors.append((_escaped(path), "file name is not valid UTF-8; rename the file to index it"))
        return
    try:
        st = os.stat(path)
    except OSError as exc:
        errors.append((_escaped(path), f"cannot stat file: {exc.strerror or exc}"))
        return
    if not stat.S_ISREG(st.st_mode):  # never opened (reading a named pipe blocks until someone writes)
        errors.append((_escaped(path), f"not a regular file ({_kind(st.st_mode)}): not read"))
        return
    found[path] = FileEntry(path=path, size=int(st.st_size), mtime=float(st.st_mtime),
                            sidecar=sidecar_signature(path, sidecars))
