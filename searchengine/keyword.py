"""Deprecated module path (it shadows the standard library's ``keyword``): see :mod:`searchengine.store.keywords`."""

from .store.keywords import FIELDS, Doc, create_schema, fts, pg_docs, remove, replace, search, terms

__all__ = ["Doc", "FIELDS", "create_schema", "replace", "remove", "search", "terms", "fts", "pg_docs"]
