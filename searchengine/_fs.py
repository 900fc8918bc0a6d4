"""The one atomic-write helper: a temp file in the target's own folder, written, fsynced, put in place
with ``os.replace`` and the folder fsynced; a file's SHA-256; and the clean-up of temp files that a
killed writer left behind.

A temp file is named ``.<target name>.<pid>.<random>.tmp``: hidden, next to its target (so the
rename stays on one filesystem) and naming its writer, so that a later writer can tell a temp
file of a dead process (removed) from another process's write in progress (left alone).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Callable, Iterable

__all__ = ["AtomicFile", "Sink", "write_atomic", "write_bytes_atomic", "file_checksum", "fsync_dir", "fsync_file",
           "temp_files", "remove_stale_temps", "remove_stale", "writer_pid", "pid_alive"]

#: what ``write_atomic``'s producer is handed: it writes one chunk of the file's bytes
Sink = Callable[[bytes], None]


class AtomicFile:
    """A temp file next to ``path`` that becomes ``path`` on :meth:`commit` (or when its ``with``
    block ends without an error) and is removed on any error.

    ``durable``: fsync the file before the rename and the folder after it (a crash then leaves the
    old file or the whole new one); without it the rename is still atomic for other processes.
    ``clean``: first remove temp files of ``path`` left by dead writers (:func:`remove_stale_temps`).
    The folder is created when missing; :class:`OSError` from any step propagates."""

    def __init__(self, path: Path | str, *, durable: bool = True, clean: bool = False) -> None:
        self.path = Path(path)
        self.durable = durable
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if clean:
            remove_stale_temps(self.path)
        fd, tmp = tempfile.mkstemp(prefix=f"{_prefix(self.path)}{os.getpid()}.", suffix=".tmp", dir=self.path.parent)
        self.temp = Path(tmp)
        self._finished = False
        try:
            self.file: BinaryIO = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self.temp.unlink(missing_ok=True)
            raise

    def commit(self) -> None:
        """Flush (and fsync), close, rename over ``path`` (and fsync the folder); on an error the temp
        file is removed and ``path`` stays as it was."""
        if self._finished:
            raise ValueError(f"the write of {self.path} is already finished")
        try:
            self.file.flush()
            if self.durable:
                os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.temp, self.path)
        except BaseException:
            self.discard()
            raise
        self._finished = True
        if self.durable:
            fsync_dir(self.path.parent)

    def discard(self) -> None:
        """Close and remove the temp file (``path`` untouched); nothing once committed."""
        if self._finished:
            return
        self._finished = True
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.temp)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None and not self._finished:
            self.commit()
        else:
            self.discard()


def write_atomic(path: Path | str, produce: Callable[[Sink], None], *, durable: bool = True,
                 clean: bool = False) -> str:
    """Write the bytes ``produce`` hands its sink to ``path`` through an :class:`AtomicFile`; returns
    their SHA-256 (hex). The file is checked to hold every byte written before it is put in place."""
    digest = hashlib.sha256()
    written = 0
    with AtomicFile(path, durable=durable, clean=clean) as out:
        def sink(chunk: bytes) -> None:
            nonlocal written
            out.file.write(chunk)
            digest.update(chunk)
            written += len(chunk)

        produce(sink)
        out.file.flush()
        size = os.fstat(out.file.fileno()).st_size
        if size != written:
            raise OSError(f"{written} bytes written but the file holds {size}")
    return digest.hexdigest()


def write_bytes_atomic(path: Path | str, data: bytes, *, durable: bool = True, clean: bool = False) -> str:
    """:func:`write_atomic` of ``data``; returns its SHA-256."""
    return write_atomic(path, lambda sink: sink(data), durable=durable, clean=clean)


def file_checksum(path: Path | str) -> str:
    """SHA-256 of a file, hex, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: Path | str) -> None:
    """fsync a folder (its entries: a rename in it); silently nothing where that is not supported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not support fsync on directories
    finally:
        os.close(fd)


def fsync_file(file: Path | str) -> None:
    """fsync a file written by other means (native code) and its folder."""
    with open(file, "rb") as fh:
        os.fsync(fh.fileno())
    fsync_dir(Path(file).parent)


def _prefix(path: Path) -> str:
    return f".{path.name}."


def temp_files(path: Path | str) -> list[Path]:
    """The temp files of writes of ``path`` (left behind only by a killed writer, or in progress)."""
    path = Path(path)
    return sorted(path.parent.glob(f"{glob.escape(_prefix(path))}*.tmp"))


def writer_pid(temp: Path) -> int | None:
    """The pid in a temp file's name (``.<name>.<pid>.<random>.tmp``), or None."""
    parts = temp.name.rsplit(".", 3)
    return int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else None


def remove_stale(temps: Iterable[Path]) -> int:
    """Remove those of ``temps`` whose writer is gone; one whose pid is alive on this machine is left
    alone (another process's write in progress). Returns how many were removed."""
    removed = 0
    for tmp in temps:
        pid = writer_pid(tmp)
        if pid is not None and pid_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


def remove_stale_temps(path: Path | str) -> int:
    """Remove the temp files of writes of ``path`` whose process is gone (killed mid-write); returns how many."""
    return remove_stale(temp_files(path))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (this process counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists (another user's process)
    return True
