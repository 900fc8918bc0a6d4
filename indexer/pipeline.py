"""Decode stage: read, hash and decode files in worker processes.

Each worker reads a file once, hashes its bytes, and decodes it (safe_open, JPEG draft
mode, the model's PIL preprocessing) unless the store already has that content, in which
case the vector is reused and nothing is decoded. Results stream back unordered while the
main process encodes, so decoding overlaps encoding.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from searchengine.errors import ImageDecodeError
from searchengine.imaging import safe_open

from .scan import FileEntry

__all__ = ["Decoded", "DecodeOptions", "decode_all", "content_hash", "MAX_FILE_BYTES"]

MAX_FILE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class DecodeOptions:
    pil_stage: Callable[[Any], Any]
    known_hashes: frozenset[str]
    max_pixels: int
    draft_size: int | None


@dataclass(frozen=True)
class Decoded:
    entry: FileEntry
    content_hash: str | None = None
    pixels: np.ndarray | None = None  # uint8 (H, W, 3) after the model's PIL stage; None when reused/failed
    width: int = 0
    height: int = 0
    error: str | None = None


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


_OPTIONS: DecodeOptions | None = None


def _init_worker(options: DecodeOptions) -> None:
    global _OPTIONS
    _OPTIONS = options


def _read(entry: FileEntry) -> bytes:
    st = os.stat(entry.path)
    if st.st_size > MAX_FILE_BYTES:
        raise ImageDecodeError(f"file too large ({st.st_size:,} bytes; the limit is {MAX_FILE_BYTES:,})")
    with open(entry.path, "rb") as fh:
        return fh.read(MAX_FILE_BYTES + 1)


def decode_one(entry: FileEntry, options: DecodeOptions | None = None) -> Decoded:
    """Read, hash and (when the content is new) decode one file; never raises for bad files."""
    opts = options or _OPTIONS
    assert opts is not None, "decode_one needs options (or an initialised worker)"
    try:
        data = _read(entry)
    except ImageDecodeError as exc:
        return Decoded(entry, error=str(exc))
    except OSError as exc:
        return Decoded(entry, error=f"cannot read file: {exc.strerror or exc}")
    digest = content_hash(data)
    if digest in opts.known_hashes:
        return Decoded(entry, content_hash=digest)
    try:
        image = safe_open(data, max_pixels=opts.max_pixels, draft_size=opts.draft_size)
    except ImageDecodeError as exc:
        return Decoded(entry, content_hash=digest, error=str(exc))
    width, height = image.size
    pixels = np.asarray(opts.pil_stage(image), dtype=np.uint8)
    return Decoded(entry, content_hash=digest, pixels=pixels, width=width, height=height)


def decode_all(entries: list[FileEntry], options: DecodeOptions, workers: int) -> Iterator[Decoded]:
    """Decode ``entries`` with ``workers`` processes (0: in this process), yielding as they finish."""
    if workers <= 0 or len(entries) < 2:
        for entry in entries:
            yield decode_one(entry, options)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = ctx.Pool(processes=min(workers, len(entries)), initializer=_init_worker, initargs=(options,))
    try:
        yield from pool.imap_unordered(decode_one, entries, chunksize=_chunksize(len(entries), workers))
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _chunksize(n: int, workers: int) -> int:
    return max(1, min(16, n // (workers * 8) or 1))


def iter_batches(items: Iterable[Decoded], size: int) -> Iterator[list[Decoded]]:
    batch: list[Decoded] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
