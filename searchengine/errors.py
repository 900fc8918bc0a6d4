"""The one exception hierarchy of the engine.

Library code raises these. Each class carries the one error table: ``exit_code`` (what the CLI
exits with) and ``http_status`` (what the HTTP API answers); a subclass inherits both unless it
sets its own. The CLI and the server read these attributes and nothing else.

    SearchEngineError
    ├── ConfigError            bad settings or arguments
    ├── ModelError
    │   ├── ModelLoadError     weights cannot be obtained or loaded
    │   └── ModelMismatchError the collection was built with another model
    ├── StoreError
    │   └── CollectionNotFoundError
    ├── VectorIndexError       faiss index cannot be built, trained, loaded or saved
    │   └── IndexChecksumError an index file is not the one the engine wrote
    ├── ImageDecodeError       one file cannot be decoded safely (a per-file error)
    ├── QueryError             a query that cannot be run (empty text, unreadable image)
    │   └── NotFoundError      an id that names no live image
    └── WriterBusyError        another writer holds the collection (one writer per collection)
"""

from __future__ import annotations

__all__ = [
    "SearchEngineError",
    "ConfigError",
    "ModelError",
    "ModelLoadError",
    "ModelMismatchError",
    "StoreError",
    "CollectionNotFoundError",
    "VectorIndexError",
    "IndexChecksumError",
    "ImageDecodeError",
    "QueryError",
    "NotFoundError",
    "DownloadError",
    "CatalogError",
    "WriterBusyError",
]


class SearchEngineError(Exception):
    """Base class of every error the engine raises on purpose."""

    exit_code = 1
    http_status = 500


class ConfigError(SearchEngineError):
    """Invalid settings, model spec or argument."""

    exit_code = 2
    http_status = 400


class ModelError(SearchEngineError):
    """A model problem."""


class ModelLoadError(ModelError):
    """The model's weights cannot be obtained or loaded."""

    exit_code = 4
    http_status = 503


class ModelMismatchError(ModelError):
    """A collection is queried or extended with a model other than the one that built it."""

    exit_code = 5
    http_status = 409


class StoreError(SearchEngineError):
    """The metadata store cannot be opened, migrated or written."""


class CollectionNotFoundError(StoreError):
    """The named collection does not exist."""

    exit_code = 3
    http_status = 404


class VectorIndexError(SearchEngineError):
    """The vector index cannot be built, trained, loaded or saved."""


class IndexChecksumError(VectorIndexError):
    """An index file does not have the checksum recorded when the engine wrote it."""


class ImageDecodeError(SearchEngineError):
    """A file cannot be decoded as an image within the safety limits.

    Raised per file; the indexer records it and goes on.
    """

    http_status = 422


class QueryError(SearchEngineError):
    """A query that cannot be run."""

    exit_code = 6
    http_status = 400


class NotFoundError(QueryError):
    """An image id that names nothing live in the collection."""

    http_status = 404


class DownloadError(SearchEngineError):
    """An image URL cannot be downloaded (a per-URL error; the message names the URL)."""


class CatalogError(ConfigError):
    """A product catalog file cannot be read (unknown format, missing columns, unreadable file)."""


class WriterBusyError(SearchEngineError):
    """Another process (or engine) is writing the collection; one writer per collection."""

    exit_code = 7
