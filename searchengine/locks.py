"""One writer per collection: an advisory lock on a file in the collection's folder.

A writable :class:`~searchengine.engine.SearchEngine` holds ``writer.lock`` (``flock`` on POSIX,
``msvcrt.locking`` on Windows) from open to close; a second writer, in this process or another,
gets :class:`~searchengine.errors.WriterBusyError` at once, naming the holder. The operating
system drops the lock when its holder exits, however it exits (a SIGKILL included), so a crashed
writer never leaves the collection locked. With a PostgreSQL store the writer also holds a session
advisory lock in the database, so writers with different data directories (other machines) that
share the database are kept to one as well; the server drops it when the connection ends. Readers take no lock: they search the last saved index
generation and pick up the next one when it is saved.

The lock file is never deleted (unlinking a lock file races with a process about to lock it); it
holds the current holder's pid, host, start time and command line, for the error message only.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import WriterBusyError

if TYPE_CHECKING:
    from .store import Store

__all__ = ["WriterLock", "LOCK_FILE"]

LOCK_FILE = "writer.lock"


class WriterLock:
    """The write lock of one collection folder; :meth:`acquire` raises when another writer has it."""

    def __init__(self, folder: Path, collection: str, store: "Store | None" = None) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.collection = collection
        self.store = store  # on PostgreSQL also locked in the database (writers with other data dirs)
        self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> "WriterLock":
        if self._fh is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            if not _try_lock(fh):
                fh.seek(0)
                holder = _describe(fh.read())
                raise WriterBusyError(
                    f"collection {self.collection!r} is being written by another process{holder}; one writer per "
                    "collection: wait for it to finish (searches work meanwhile), or write to another --collection")
            if self.store is not None and not self.store.lock_writer(self.collection):
                _unlock(fh)
                raise WriterBusyError(
                    f"collection {self.collection!r} is being written by another process through the same database "
                    f"({self.store.db.url.render_as_string(hide_password=True)}); one writer per collection: "
                    "wait for it to finish (searches work meanwhile), or write to another --collection")
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                                 "command": " ".join(sys.argv)[:500]}))
            fh.flush()
        except BaseException:
            fh.close()
            raise
        self._fh = fh
        return self

    def release(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        if self.store is not None:
            self.store.unlock_writer(self.collection)
        try:
            fh.seek(0)
            fh.truncate()  # what is left says nobody holds it
            _unlock(fh)
        finally:
            fh.close()

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(text: str) -> str:
    """' (pid 123 on host, since 12:00:03: searchengine index ...)' from the lock file's contents."""
    try:
        info = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        command = f": {info['command']}" if info.get("command") else ""
        return f" (pid {int(info['pid'])} on {info['host']}, since {since}{command})"
    except (ValueError, KeyError, TypeError):
        return ""


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fh) -> bool:
        fh.seek(0)
        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fh) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fh) -> bool:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fh) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
