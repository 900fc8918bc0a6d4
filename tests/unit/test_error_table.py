"""The one error table: each error class carries its CLI exit code and its HTTP status."""

from __future__ import annotations

import inspect

import pytest

from searchengine import errors as E

EXPECTED = {
    E.SearchEngineError: (1, 500),
    E.ConfigError: (2, 400),
    E.CatalogError: (2, 400),
    E.CollectionNotFoundError: (3, 404),
    E.StoreError: (1, 500),
    E.ModelError: (1, 500),
    E.ModelLoadError: (4, 503),
    E.ModelMismatchError: (5, 409),
    E.QueryError: (6, 400),
    E.NotFoundError: (6, 404),
    E.WriterBusyError: (7, 500),
    E.ImageDecodeError: (1, 422),
    E.VectorIndexError: (1, 500),
    E.IndexChecksumError: (1, 500),
    E.DownloadError: (1, 500),
}


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_each_error_carries_its_exit_code_and_http_status(cls):
    assert (cls.exit_code, cls.http_status) == EXPECTED[cls]
    assert (cls("x").exit_code, cls("x").http_status) == EXPECTED[cls]


def test_every_exported_error_is_in_the_table():
    exported = {getattr(E, name) for name in E.__all__}
    classes = {obj for _, obj in inspect.getmembers(E, inspect.isclass) if issubclass(obj, E.SearchEngineError)}
    assert exported == classes == set(EXPECTED)
