"""What the collection-wide stages read from their caller (a SearchEngine), declared as a protocol so
that stages never import the engine that sits above them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from ..models.clip import ClipEncoder
    from ..store import CollectionRecord, Store

__all__ = ["CollectionHost"]


class CollectionHost(Protocol):
    """An open collection: its store, its record and its dual encoder."""

    @property
    def store(self) -> "Store": ...

    @property
    def collection(self) -> "CollectionRecord": ...

    @property
    def encoder(self) -> "ClipEncoder": ...

    def sync_texts(self) -> Any: ...
