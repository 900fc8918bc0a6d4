"""Decode stage: read, hash and decode files in worker processes.

Each worker reads a file once, hashes its bytes, and decodes it (safe_open, JPEG draft
mode, the model's PIL preprocessing) unless the store already has that content, in which
case the vector is reused and nothing is decoded. Results stream back unordered while the
main process encodes, so decoding overlaps encoding.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from searchengine.errors import ImageDecodeError
from searchengine.imaging import safe_open, taken_at
from searchengine.store import content_hash

from .scan import FileEntry
from .sidecar import read_sidecar

__all__ = ["Decoded", "DecodeOptions", "decode_all", "MAX_FILE_BYTES"]

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
_READER = None  # the worker's OCR reader, made on first use


def _init_worker(options: DecodeOptions) -> None:
    global _OPTIONS
    _OPTIONS = options
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


def _read(entry: FileEntry) -> bytes:
    st = os.stat(entry.path)
    if st.st_size > MAX_FILE_BYTES:
        raise ImageDecodeError(f"file too large ({st.st_size:,} bytes; the limit is {MAX_FILE_BYTES:,})")
    with open(entry.path, "rb") as fh:
        return fh.read(MAX_FILE_BYTES + 1)


def decode_one(entry: FileEntry, options: DecodeOptions | None = None) -> Decoded:
    """Read, hash and (when the content is new) decode one file; never raises for bad files.

    Its sidecar caption and EXIF date are read every time (cheap); pixels and OCR text only
    for contents that need them.
    """
    opts = options or _OPTIONS
    assert opts is not None, "decode_one needs options (or an initialised worker)"
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
        from searchengine.ocr import TextReader

        _READER = TextReader(threads=1 if _OPTIONS is not None else None)  # one thread per worker process
    return _READER


def _decode_chunk(entries: list[FileEntry]) -> list[Decoded]:
    return [decode_one(e) for e in entries]


def decode_all(entries: list[FileEntry], options: DecodeOptions, workers: int,
               max_pending: int = 256) -> Iterator[Decoded]:
    """Decode ``entries`` with ``workers`` processes (0: in this process), yielding as they finish.

    At most about ``max_pending`` files are decoded ahead of the consumer, so memory stays bounded
    when the model is slower than the decoders. A worker that dies (a native decoder crash, the
    OOM killer) costs only the file it was decoding: the files in flight are retried one at a
    time to find it, and it is reported as an error.
    """
    if workers <= 0 or len(entries) < 2:
        for entry in entries:
            yield decode_one(entry, options)
        return
    workers = min(workers, len(entries))
    size = max(1, min(8, len(entries) // (workers * 4)))
    chunks = deque(entries[i : i + size] for i in range(0, len(entries), size))
    yield from _run_pool(chunks, options, workers, max(workers * 2, max_pending // size))


def _run_pool(chunks: deque, options: DecodeOptions, workers: int, window: int) -> Iterator[Decoded]:
    suspects: deque[list[FileEntry]] = deque()  # after a crash: one file per task, one task at a time
    executor = _executor(options, workers)
    inflight: dict = {}
    try:
        while chunks or suspects or inflight:
            if not inflight and suspects:
                suspect = suspects.popleft()
                inflight[executor.submit(_decode_chunk, suspect)] = suspect
            while chunks and not suspects and len(inflight) < window:
                chunk = chunks.popleft()
                inflight[executor.submit(_decode_chunk, chunk)] = chunk
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            alone = len(inflight) == 1  # a crash can be blamed on a task only when it ran by itself
            crashed = False
            for future in done:
                chunk = inflight.pop(future)
                try:
                    yield from future.result()
                except BrokenProcessPool:
                    crashed = True
                    if len(chunk) == 1 and alone:
                        yield Decoded(chunk[0], error="the image decoder crashed on this file")
                    else:
                        suspects.extend([e] for e in chunk)
            if crashed:
                suspects.extend([e] for chunk in inflight.values() for e in chunk)
                inflight.clear()
                _shutdown(executor)
                executor = _executor(options, workers)
    finally:
        _shutdown(executor)


def _executor(options: DecodeOptions, workers: int) -> ProcessPoolExecutor:
    # fork is fast and shares the options; elsewhere (macOS, Windows) spawn is the safe default
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=_init_worker, initargs=(options,))


def _shutdown(executor: ProcessPoolExecutor) -> None:
    """Stop now: cancel queued work and end the workers (a hung decoder must not block us)."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
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
