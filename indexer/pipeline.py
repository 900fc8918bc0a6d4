"""Decode stage: read, hash and decode files in worker processes.

Each worker reads a file once, hashes its bytes, and decodes it (safe_open, JPEG draft
mode, the model's PIL preprocessing) unless the store already has that content, in which
case the vector is reused and nothing is decoded. Results stream back unordered while the
main process encodes, so decoding overlaps encoding.

Untrusted files are decoded in worker processes so that a decoder fault costs one file:
each worker may map at most ``memory_limit`` bytes more than it had at start (RLIMIT_AS;
going over is a MemoryError, recorded for that file), and posts which file it is decoding
and since when, so a file that runs past ``timeout`` seconds gets its worker killed and a
"decoding timed out" error. A worker that dies (a native crash, the OOM killer) costs the
file it was decoding, found by retrying the files then in progress one at a time.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from searchengine.errors import ImageDecodeError
from searchengine.hashing import content_hash
from searchengine.imaging import open_regular, safe_open, taken_at
from searchengine.ocr import TextReader

from .scan import FileEntry
from .sidecar import read_sidecar

__all__ = ["Decoded", "DecodeOptions", "decode_all", "decode_one", "MAX_FILE_BYTES"]

MAX_FILE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class DecodeOptions:
    pil_stage: Callable[[Any], Any]
    #: contents the store already has a vector for: read and hashed, never decoded
    known_hashes: frozenset[str]
    max_pixels: int
    draft_size: int | None
    #: path -> the content hash stored for it: a file that only got a new mtime is not decoded
    own_hashes: dict[str, str] = field(default_factory=dict)
    #: read the text inside images (OCR); contents in ``ocr_hashes`` already have theirs
    ocr: bool = False
    ocr_hashes: frozenset[str] = frozenset()
    #: seconds one file may take in a worker before the worker is killed; 0: no limit (never
    #: enforced when decoding in the main process)
    timeout: float = 0.0
    #: bytes of address space a worker may map beyond what it had at start; 0: no limit
    memory_limit: int = 0


@dataclass(frozen=True)
class Decoded:
    entry: FileEntry
    content_hash: str | None = None
    pixels: np.ndarray | None = None  # uint8 (H, W, 3) after the model's PIL stage; None when reused/failed
    width: int = 0
    height: int = 0
    error: str | None = None
    caption: str | None = None  # from the sidecars
    attributes: dict = field(default_factory=dict)
    sidecar_error: str | None = None
    taken_at: str | None = None  # EXIF DateTimeOriginal
    ocr_text: str | None = None  # None: not read this time


_OPTIONS: DecodeOptions | None = None
_SLOT = None  # the worker's place on the pool's board: (shared array, offset)
_READER = None  # the worker's OCR reader, made on first use


def _init_worker(options: DecodeOptions, board, claimed) -> None:
    global _OPTIONS, _SLOT
    _OPTIONS = options
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _limit_memory(options.memory_limit)
    with claimed.get_lock():
        index = claimed.value
        claimed.value += 1
    _SLOT = (board, 3 * index)
    board[3 * index] = os.getpid()


def _limit_memory(extra: int) -> None:
    """Cap this process's address space at what it maps now plus ``extra`` bytes (Linux; a no-op
    where RLIMIT_AS or /proc is missing). What a forked worker inherits (torch, the model) is
    already mapped, so the cap bounds what decoding adds."""
    if extra <= 0:
        return
    try:
        import resource

        with open("/proc/self/statm") as fh:
            mapped = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft == resource.RLIM_INFINITY or limit < soft:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _read(entry: FileEntry) -> bytes:
    with open_regular(entry.path) as fh:  # a FIFO or socket put there since the scan is refused, not waited on
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_FILE_BYTES:
            raise ImageDecodeError(f"file too large ({size:,} bytes; the limit is {MAX_FILE_BYTES:,})")
        data = fh.read(size + 1)  # what it holds, not a buffer of the limit's size
    if len(data) > size:
        raise ImageDecodeError("the file grew while it was read (still being written?)")
    return data


def decode_one(entry: FileEntry, options: DecodeOptions | None = None) -> Decoded:
    """Read, hash and (when the content is new) decode one file; never raises for bad files.

    Its sidecar caption and EXIF date are read every time (cheap); pixels and OCR text only
    for contents that need them. Running out of memory (a worker's limit) is that file's error.
    """
    opts = options or _OPTIONS
    assert opts is not None, "decode_one needs options (or an initialised worker)"
    try:
        return _decode_one(entry, opts)
    except MemoryError:
        limit = f" (a decode worker may use {opts.memory_limit / 2**20:,.0f} MB more than at start; " \
                "SEARCHENGINE_DECODE_MEMORY_MB raises it)" if opts.memory_limit else ""
        return Decoded(entry, error=f"out of memory decoding this file{limit}")


def _decode_one(entry: FileEntry, opts: DecodeOptions) -> Decoded:
    try:
        data = _read(entry)
    except ImageDecodeError as exc:
        return Decoded(entry, error=str(exc))
    except OSError as exc:
        return Decoded(entry, error=f"cannot read file: {exc.strerror or exc}")
    digest = content_hash(data)
    side = read_sidecar(entry.path)
    meta = dict(content_hash=digest, caption=side.caption, attributes=dict(side.attributes),
                sidecar_error=side.error, taken_at=taken_at(data))
    known = digest in opts.known_hashes or opts.own_hashes.get(entry.path) == digest
    wants_text = opts.ocr and digest not in opts.ocr_hashes
    if known and not wants_text:
        return Decoded(entry, **meta)
    try:  # OCR needs the full resolution, not a draft
        image = safe_open(data, max_pixels=opts.max_pixels, draft_size=None if wants_text else opts.draft_size)
    except ImageDecodeError as exc:
        return Decoded(entry, error=str(exc), **meta)
    text = _text_reader().read(image) if wants_text else None
    if known:
        return Decoded(entry, ocr_text=text, **meta)
    width, height = image.info.get("original_size", image.size)  # not the draft decode's size
    pixels = np.asarray(opts.pil_stage(image), dtype=np.uint8)
    return Decoded(entry, pixels=pixels, width=width, height=height, ocr_text=text, **meta)


def _text_reader():
    global _READER
    if _READER is None:
        _READER = TextReader(threads=1 if _OPTIONS is not None else None)  # one thread per worker process
    return _READER


#: a unit of work: (sequence number, file) pairs; the number names the file on the workers' board
Task = list[tuple[int, FileEntry]]


def _decode_task(task: Task) -> list[Decoded]:
    board, at = _SLOT
    out = []
    for seq, entry in task:
        board[at + 2] = time.monotonic()  # the start first: the main process reads the file number first
        board[at + 1] = seq
        try:
            out.append(decode_one(entry))
        finally:
            board[at + 1] = -1
    return out


def decode_all(entries: list[FileEntry], options: DecodeOptions, workers: int,
               max_pending: int = 256) -> Iterator[Decoded]:
    """Decode ``entries`` with ``workers`` processes (0: in this process), yielding as they finish.

    At most about ``max_pending`` files are decoded ahead of the consumer, so memory stays bounded
    when the model is slower than the decoders. A file that runs past ``options.timeout`` costs
    its worker and is reported as timed out; a worker that dies (a native decoder crash, the OOM
    killer) costs only the file it was decoding: the files then in progress are retried one at a
    time to find it, and it is reported as an error.
    """
    if workers <= 0:
        for entry in entries:
            yield decode_one(entry, options)
        return
    if not entries:
        return
    workers = min(workers, len(entries))
    size = max(1, min(8, len(entries) // (workers * 4)))
    numbered = list(enumerate(entries))
    tasks = deque(numbered[i : i + size] for i in range(0, len(numbered), size))
    yield from _run_pool(tasks, options, workers, max(workers * 2, max_pending // size))


def _run_pool(tasks: deque[Task], options: DecodeOptions, workers: int, window: int) -> Iterator[Decoded]:
    suspects: deque[Task] = deque()  # after a crash: one file per task, one task at a time
    pool = _Pool(options, workers)
    inflight: dict[Future, Task] = {}
    try:
        while tasks or suspects or inflight:
            if not inflight and suspects:
                suspect = suspects.popleft()
                inflight[pool.submit(suspect)] = suspect
            while tasks and not suspects and len(inflight) < window:
                task = tasks.popleft()
                inflight[pool.submit(task)] = task
            done, _ = wait(list(inflight), timeout=pool.poll, return_when=FIRST_COMPLETED)
            alone = len(inflight) == 1  # a crash can be blamed on a task only when it ran by itself
            in_progress = pool.in_progress()  # read before anything else can change it
            overdue = pool.kill_overdue()
            broken: list[Task] = []
            for future in done:
                task = inflight.pop(future)
                try:
                    yield from future.result()
                except BrokenProcessPool:
                    broken.append(task)
                else:  # finished just as it was found overdue: its worker is gone, its result is not
                    overdue = [pair for pair in overdue if pair not in task]
            if not broken and not pool.killed:
                continue
            for _, entry in overdue:
                yield Decoded(entry, error=f"decoding timed out after {options.timeout:g} s")
            lost = [pair for task in broken + list(inflight.values()) for pair in task if pair not in overdue]
            inflight.clear()
            if pool.killed:  # a worker killed for its time broke the pool: the others are not to blame
                tasks.extendleft([pair] for pair in lost)
            elif alone and len(broken) == 1 and len(broken[0]) == 1:
                yield Decoded(broken[0][0][1], error="the image decoder crashed on this file")
            else:  # retry alone the files being decoded when it died (all of them if unknown)
                caught = [pair for pair in lost if pair[0] in in_progress] or lost
                suspects.extend([pair] for pair in caught)
                tasks.extendleft([pair] for pair in lost if pair not in caught)
            pool.close()
            pool = _Pool(options, workers)
    finally:
        pool.close()


class _Pool:
    """A process pool whose workers post on a shared board which file each is decoding and
    since when (per worker: pid, file number or -1, start on the monotonic clock)."""

    def __init__(self, options: DecodeOptions, workers: int) -> None:
        # fork is fast and shares the options; elsewhere (macOS, Windows) spawn is the safe default
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.timeout = options.timeout
        self.poll = min(1.0, self.timeout / 4) if self.timeout > 0 else None
        self.board = context.RawArray("d", [0.0, -1.0, 0.0] * workers)
        claimed = context.Value("i", 0)
        self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                            initargs=(options, self.board, claimed))
        self.tasks: dict[int, tuple[int, FileEntry]] = {}
        self.killed = False  # a worker was killed for running past the timeout

    def submit(self, task: Task) -> Future:
        self.tasks.update((pair[0], pair) for pair in task)
        return self.executor.submit(_decode_task, task)

    def _slots(self) -> Iterator[tuple[int, int, float]]:
        for at in range(0, len(self.board), 3):
            seq = int(self.board[at + 1])
            if seq >= 0:
                yield int(self.board[at]), seq, self.board[at + 2]

    def in_progress(self) -> set[int]:
        return {seq for _, seq, _ in self._slots()}

    def kill_overdue(self) -> list[tuple[int, FileEntry]]:
        """Kill the workers whose current file has run past the timeout; return those files."""
        if self.timeout <= 0:
            return []
        now, out = time.monotonic(), []
        for pid, seq, started in self._slots():
            if now - started > self.timeout and seq in self.tasks:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.killed = True
                out.append(self.tasks[seq])
        return out

    def close(self) -> None:
        """Stop now: cancel queued work and end the workers (a hung decoder must not block us)."""
        processes = list((getattr(self.executor, "_processes", None) or {}).values())
        self.executor.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        for proc in processes:
            proc.join(timeout=5)


def iter_batches(items: Iterable[Decoded], size: int) -> Iterator[list[Decoded]]:
    batch: list[Decoded] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
