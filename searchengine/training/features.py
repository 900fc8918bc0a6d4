"""The one cache of locked-tower features used by contrastive and ITM training: arrays keyed by content
hash (image bytes, caption text), computed once for what the cache lacks, never pickled.

Two layouts on disk: an ``archive`` (one ``.npz`` per model setting, read whole when opened and
rewritten by :meth:`FeatureCache.save`: many small vectors) and ``files`` (one ``.npy`` per key under a
folder, written atomically as each is computed, so a crash loses nothing: large or ragged arrays).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from ..errors import ImageDecodeError
from ..hashing import content_hash
from ..imaging import safe_open

__all__ = ["FeatureCache", "Layout", "file_key", "text_key", "image_features", "text_features"]

Layout = Literal["archive", "files"]


class FeatureCache:
    """Arrays by key; ``path`` None keeps them in memory only."""

    def __init__(self, path: Path | None = None, layout: Layout = "archive") -> None:
        self.path = path
        self.layout: Layout = layout
        self._memory: dict[str, np.ndarray] = {}
        if path is None:
            return
        if layout == "files":
            path.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            with np.load(path, allow_pickle=False) as npz:
                self._memory = dict(zip(npz["keys"].tolist(), npz["values"]))

    @classmethod
    def archive(cls, path: Path | None) -> "FeatureCache":
        """One ``.npz`` at ``path`` (None: memory only)."""
        return cls(path, "archive")

    @classmethod
    def files(cls, folder: Path | None) -> "FeatureCache":
        """One ``.npy`` per key under ``folder`` (None: memory only)."""
        return cls(folder, "files")

    def _file(self, key: str) -> Path | None:
        return self.path / f"{key}.npy" if self.layout == "files" and self.path is not None else None

    def get(self, key: str) -> np.ndarray | None:
        if key in self._memory:
            return self._memory[key]
        file = self._file(key)
        if file is not None and file.is_file():
            try:
                return np.load(file, allow_pickle=False)
            except (OSError, ValueError):
                return None  # a damaged entry is recomputed
        return None

    def put(self, key: str, value: np.ndarray) -> None:
        file = self._file(key)
        if file is None:
            self._memory[key] = value
            return
        tmp = file.with_name(f"{key}.tmp.npy")
        np.save(tmp, value, allow_pickle=False)
        tmp.replace(file)

    def save(self) -> None:
        """Write the archive (a no-op for the ``files`` layout, whose entries are written as they come)."""
        if self.layout != "archive" or self.path is None or not self._memory:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(list(self._memory)), values=np.stack(list(self._memory.values())))
        tmp.replace(self.path)


def file_key(path: Path) -> str:
    """The cache key of an image file: the hash of its bytes (OSError when unreadable)."""
    return content_hash(Path(path).read_bytes())


def text_key(text: str) -> str:
    """The cache key of a caption."""
    return "t" + content_hash(text.encode("utf-8"))


def image_features(paths: Sequence[Path], encode: Callable[[list], Sequence[np.ndarray]], size: int,
                   cache: FeatureCache, *, batch: int = 32, progress: Callable[[int], None] | None = None,
                   ) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Each path's features (None when unreadable or undecodable) and key (None likewise).

    What ``cache`` lacks is decoded (``size``: the draft size) and ``encode``-d in batches of ``batch``
    images; ``progress`` is told how many paths are done.
    """
    keys: list[str | None] = []
    for path in paths:
        try:
            keys.append(file_key(path))
        except OSError:
            keys.append(None)
    out = [cache.get(k) if k else None for k in keys]
    todo = [i for i, k in enumerate(keys) if k and out[i] is None]
    if progress is not None and len(paths) > len(todo):
        progress(len(paths) - len(todo))  # cached (or unreadable): nothing to compute
    for start in range(0, len(todo), batch):
        chunk, images = [], []
        for i in todo[start : start + batch]:
            try:
                images.append(safe_open(paths[i], draft_size=size))
                chunk.append(i)
            except ImageDecodeError:
                keys[i] = None
        if images:
            for i, feats in zip(chunk, encode(images)):
                cache.put(keys[i], feats)  # type: ignore[arg-type]
                out[i] = feats
        if progress is not None:
            progress(len(todo[start : start + batch]))
    return out, keys


def text_features(texts: Sequence[str], encode: Callable[[list[str]], Sequence[np.ndarray]], cache: FeatureCache,
                  *, batch: int = 256) -> list[np.ndarray]:
    """Each text's features: from ``cache``, or ``encode``-d in batches of ``batch`` texts."""
    keys = [text_key(t) for t in texts]
    out = [cache.get(k) for k in keys]
    todo = [i for i, v in enumerate(out) if v is None]
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        for i, feats in zip(chunk, encode([texts[i] for i in chunk])):
            cache.put(keys[i], feats)
            out[i] = feats
    return out  # type: ignore[return-value]
