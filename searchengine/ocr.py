"""Text inside images, read with RapidOCR's ONNX models (the optional ``[ocr]`` extra).

:class:`TextReader` loads the models on its first :meth:`~TextReader.read` (about
0.15 s; the models ship inside the ``rapidocr-onnxruntime`` wheel, nothing is
downloaded). One reader per process: the indexer creates one per worker.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
from PIL import Image

from searchengine.errors import ConfigError
from searchengine.imaging import to_rgb

__all__ = ["TextReader", "available"]

MISSING_MESSAGE = "text recognition needs the ocr extra: pip install 'searchengine[ocr]'"
# rapidocr gives these loggers their own DEBUG-level stderr handlers.
_RAPIDOCR_LOGGERS = ("RapidOCR", "OrtInferSession")


def available() -> bool:
    """Whether ``rapidocr_onnxruntime`` (and so :class:`TextReader`) can be imported here."""
    try:
        import rapidocr_onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class TextReader:
    """Reads the text in an image: one line per row of text, top to bottom; the pieces
    detected on the same row are joined left to right by spaces."""

    def __init__(self, min_confidence: float = 0.5, max_side: int = 1600, *, threads: int | None = None) -> None:
        """``min_confidence``: drop lines recognised with a lower score; ``max_side``: downscale
        larger images first; ``threads``: onnxruntime intra-op threads (None: all cores)."""
        if max_side < 32:
            raise ConfigError(f"max_side must be at least 32, got {max_side}")
        self.min_confidence = min_confidence
        self.max_side = max_side
        self.threads = threads
        self._engine: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._engine is None:
                try:
                    from rapidocr_onnxruntime import RapidOCR
                except ImportError as exc:
                    raise ConfigError(MISSING_MESSAGE) from exc
                _quiet()
                options: dict[str, Any] = {"text_score": self.min_confidence}
                if self.threads is not None:
                    options["intra_op_num_threads"] = self.threads
                self._engine = RapidOCR(**options)
                _quiet()  # get_logger() resets the level when a logger is first made
            return self._engine

    def read(self, image: Image.Image) -> str:
        """The text found in ``image`` (any mode), rows joined by "\\n"; "" when there is none."""
        engine = self._engine if self._engine is not None else self._load()
        width, height = image.size
        if width < 1 or height < 1:
            return ""
        image.load()
        image = to_rgb(image)
        scale = self.max_side / max(width, height)
        if scale < 1:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        # rapidocr treats a 3-channel array as BGR (the colour order its models were trained on)
        pixels = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
        result, _ = engine(pixels)
        boxes = [
            (box, text.strip())
            for box, text, score in result or ()
            if float(score) >= self.min_confidence and text.strip()
        ]
        return "\n".join(" ".join(row) for row in _rows(boxes))


def _quiet() -> None:
    for name in _RAPIDOCR_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _rows(boxes: list[tuple[Any, str]]) -> list[list[str]]:
    """Group detected (box, text) into rows, top to bottom, each left to right. A box joins
    the row above when its vertical centre lies within the span of that row's first box."""
    rows: list[tuple[float, float, list[tuple[float, str]]]] = []
    for box, text in sorted(boxes, key=lambda item: min(p[1] for p in item[0])):
        ys = [p[1] for p in box]
        top, bottom = min(ys), max(ys)
        left = min(p[0] for p in box)
        if rows and rows[-1][0] <= (top + bottom) / 2 <= rows[-1][1]:
            rows[-1][2].append((left, text))
        else:
            rows.append((top, bottom, [(left, text)]))
    return [[text for _, text in sorted(row)] for _, _, row in rows]
