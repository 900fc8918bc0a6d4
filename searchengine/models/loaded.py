"""The models one open collection has loaded: its dual encoder (and whether it was checked against
the collection's fingerprint) and its stage models, under one lock. Engines over one collection in
one process share it, so each model loads once."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import ModelLoadError, ModelMismatchError
from . import clip
from .query_text import QUERY_MODEL_DIR, OnnxTextEncoder

if TYPE_CHECKING:  # pragma: no cover
    from ..store import CollectionRecord
    from .clip import ClipEncoder

__all__ = ["LoadedModels", "check_fingerprint"]

log = logging.getLogger(__name__)


class LoadedModels:
    """Models loaded so far; :meth:`stage` loads a stage model once per (task, spec)."""

    def __init__(self, encoder: "ClipEncoder | None" = None) -> None:
        self.encoder = encoder
        self.checked = False  # the encoder was compared with the collection's fingerprint
        self.lock = threading.RLock()  # threads (the HTTP server, its jobs) load each model once
        self._stages: dict[tuple[str, str], Any] = {}
        self._text: Any = None  # what encodes text queries: an OnnxTextEncoder, or the encoder

    def stage(self, task: str, spec: str, load: Callable[[], Any]) -> Any:
        """The model of ``task`` named ``spec``, loaded with ``load()`` the first time."""
        with self.lock:
            if (task, spec) not in self._stages:
                self._stages[(task, spec)] = load()
            return self._stages[(task, spec)]

    def checked_encoder(self, rec: "CollectionRecord", device: str, precision: str) -> "ClipEncoder":
        """The collection's dual encoder, loaded once and checked once against the fingerprint the
        collection recorded when it was built (other weights behind the same spec are refused)."""
        if self.encoder is not None and self.checked:
            return self.encoder
        with self.lock:
            if self.encoder is None:
                self.encoder = clip.load_encoder(rec.model_spec, device, precision)
            if not self.checked:
                check_fingerprint(self.encoder, rec)
                self.checked = True
            return self.encoder


    def text_encoder(self, rec: "CollectionRecord", collection_dir: Path, device: str, precision: str) -> Any:
        """What encodes text queries: the collection's exported text tower on ONNX Runtime (no torch;
        ``searchengine export-model``) on a CPU, else the dual encoder itself (one log line says why)."""
        if self._text is not None:
            return self._text
        with self.lock:
            if self._text is None and self.encoder is None and device in ("auto", "cpu"):
                try:
                    self._text = OnnxTextEncoder.load(collection_dir / QUERY_MODEL_DIR, rec.fingerprint_id, rec.dim)
                except ModelLoadError as exc:
                    log.info("text queries run on torch: %s", exc)
            if self._text is None:
                self._text = self.checked_encoder(rec, device, precision)
            return self._text


def check_fingerprint(encoder: "ClipEncoder", rec: "CollectionRecord") -> None:
    """Refuse an encoder whose dimension or probe vectors differ from what ``rec`` recorded."""
    if encoder.dim != rec.dim:
        raise ModelMismatchError(
            f"collection {rec.name!r} holds {rec.dim}-dimensional vectors but {rec.model_spec!r} "
            f"now gives {encoder.dim}; the model's weights changed since the collection was built")
    recorded = np.frombuffer(rec.fingerprint, dtype="<f4").reshape(-1, rec.dim)
    probe = encoder.probe()
    if not clip.probes_match(probe, recorded):
        raise ModelMismatchError(
            f"the weights behind {rec.model_spec!r} are not the ones collection {rec.name!r} was built with "
            f"(fingerprint {clip.fingerprint_id(probe)} != {rec.fingerprint_id}); restore the original weights, "
            "or index into another --collection")
