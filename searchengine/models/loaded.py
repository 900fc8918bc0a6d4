"""The models one open collection has loaded: its dual encoder (and whether it was checked against
the collection's fingerprint) and its stage models, under one lock. Engines over one collection in
one process share it, so each model loads once."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from .clip import ClipEncoder

__all__ = ["LoadedModels"]


class LoadedModels:
    """Models loaded so far; :meth:`stage` loads a stage model once per (task, spec)."""

    def __init__(self, encoder: "ClipEncoder | None" = None) -> None:
        self.encoder = encoder
        self.checked = False  # the encoder was compared with the collection's fingerprint
        self.lock = threading.RLock()  # threads (the HTTP server, its jobs) load each model once
        self._stages: dict[tuple[str, str], Any] = {}

    def stage(self, task: str, spec: str, load: Callable[[], Any]) -> Any:
        """The model of ``task`` named ``spec``, loaded with ``load()`` the first time."""
        with self.lock:
            if (task, spec) not in self._stages:
                self._stages[(task, spec)] = load()
            return self._stages[(task, spec)]
