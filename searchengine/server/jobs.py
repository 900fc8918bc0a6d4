"""The engine the server reads from, and the background jobs that write (index, import, remove).

Writes run one at a time in a worker thread on their own writable engine (one writer per
collection). Searches go on meanwhile against the loaded index; rows a job commits join only once
the index holds them, and removed rows never join. When a job ends, or another process changes
the collection's index, a new engine object is opened and swapped in; requests already running
finish on the old one, so none sees a half-written state.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from ..engine import SearchEngine
from ..errors import CollectionNotFoundError, SearchEngineError

__all__ = ["EngineHolder", "Job", "JobManager", "open_writer_for"]

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed"]


class EngineHolder:
    """The current read engine of one collection; reopened when its index generation changes."""

    def __init__(self, open_engine: Callable[[], SearchEngine], check_every: float = 1.0) -> None:
        self._open = open_engine
        self._lock = threading.Lock()
        self._engine: SearchEngine | None = None
        self._generation: tuple | None = None
        self._checked = 0.0
        self.check_every = check_every

    def get(self) -> SearchEngine:
        """The engine to serve a request with (CollectionNotFoundError before the first index)."""
        now = time.monotonic()
        engine = self._engine
        if engine is not None and now - self._checked < self.check_every:
            return engine
        with self._lock:
            self._checked = now
            if self._engine is None:
                self._engine = self._opened()
                self._generation = self._stamp(self._engine)
            elif self._stamp(self._engine) != self._generation:
                self._swap()
            return self._engine

    def _opened(self) -> SearchEngine:
        engine = self._open()
        engine.refresh_every = None  # this holder checks for new generations and swaps whole engines
        return engine

    def reload(self) -> None:
        """Swap in an engine over the collection as it is now (after a write)."""
        with self._lock:
            if self._engine is None:
                try:
                    self._engine = self._opened()
                except CollectionNotFoundError:
                    return
                self._generation = self._stamp(self._engine)
            else:
                self._swap()

    def _swap(self) -> None:
        old = self._engine
        assert old is not None
        new = old.reopen()
        self._engine, self._generation = new, self._stamp(new)

    @staticmethod
    def _stamp(engine: SearchEngine) -> tuple:
        rec = engine.stored_record()
        return (rec.index_seq, rec.text_index_seq, rec.index_factory, rec.ocr, rec.caption_model) if rec else ()

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None


@dataclass
class Job:
    id: int
    kind: str
    params: dict[str, Any]
    state: JobState = "queued"
    done: int = 0
    total: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("id", "kind", "params", "state", "done", "total", "result", "error",
                                              "created", "started", "finished")}


class _Progress:
    """The indexer's Progress protocol, writing into a job."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def start(self, total: int) -> None:
        self.job.total, self.job.done = total, 0

    def advance(self, n: int) -> None:
        self.job.done += n

    def close(self) -> None:
        pass


class JobManager:
    """Runs write jobs one after another in a worker thread; keeps the last ``keep`` jobs to poll."""

    def __init__(self, holder: EngineHolder, open_writer: Callable[[], SearchEngine], keep: int = 200) -> None:
        self.holder = holder
        self.open_writer = open_writer
        self.keep = keep
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._queue: list[tuple[Job, Callable]] = []
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._stopping = False

    def submit(self, kind: str, params: dict[str, Any], run: Callable[[SearchEngine, _Progress], Any]) -> Job:
        job = Job(next(self._ids), kind, params)
        with self._cond:
            self._jobs[job.id] = job
            for old in sorted(self._jobs)[: max(0, len(self._jobs) - self.keep)]:
                if self._jobs[old].state in ("done", "failed"):
                    del self._jobs[old]
            self._queue.append((job, run))
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="searchengine-jobs", daemon=True)
                self._worker.start()
            self._cond.notify()
        return job

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        return [self._jobs[i] for i in sorted(self._jobs, reverse=True)]

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job, run = self._queue.pop(0)
                job.state, job.started = "running", time.time()
            try:
                engine = self.open_writer()
                try:
                    out = run(engine, _Progress(job))
                finally:
                    engine.close()
                job.result = out.to_dict() if hasattr(out, "to_dict") else out
                job.state = "done"
            except SearchEngineError as exc:
                job.state, job.error = "failed", str(exc)
            except Exception as exc:  # noqa: BLE001 - a job's crash is reported to whoever polls it
                log.error("job %s failed:\n%s", job.id, traceback.format_exc())
                job.state, job.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
            finally:
                job.finished = time.time()
                self.holder.reload()


def open_writer_for(holder: EngineHolder, open_new: Callable[[], SearchEngine]) -> Callable[[], SearchEngine]:
    """A writer factory that shares the read engine's loaded model when there is one."""

    def open_writer() -> SearchEngine:
        try:
            reader = holder.get()
        except CollectionNotFoundError:
            return open_new()  # the first job creates the collection
        return reader.writer()

    return open_writer


# -- until SearchEngine offers these itself, the only places that touch its private state ------------
