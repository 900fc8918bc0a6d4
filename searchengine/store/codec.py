"""The vector codec: float32 rows <-> the little-endian float16 blobs the store keeps."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["pack_vectors", "unpack_vectors", "as_stored"]


def pack_vectors(vectors: np.ndarray) -> list[bytes]:
    """float32 rows -> little-endian float16 blobs."""
    return [row.tobytes() for row in np.asarray(vectors, dtype="<f2")]


def unpack_vectors(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Blobs of ``dim`` float16 values -> float32 rows, (0, dim) for none."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f2").reshape(len(blobs), dim).astype(np.float32)


def as_stored(vectors: np.ndarray) -> np.ndarray:
    """The float32 values a vector has after a round trip through the store."""
    return np.asarray(vectors, dtype="<f2").astype(np.float32)
