"""The store's repositories, one per table group; :class:`searchengine.store.Store` composes them."""

from .catalog import CatalogRepo
from .collections import CollectionsRepo, WriterLocks
from .images import ImagesRepo
from .search import SearchRepo
from .texts import TextsRepo
from .vectors import VectorsRepo

__all__ = ["CatalogRepo", "CollectionsRepo", "ImagesRepo", "SearchRepo", "TextsRepo", "VectorsRepo", "WriterLocks"]
