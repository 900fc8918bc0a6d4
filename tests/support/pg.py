"""PostgreSQL for the tests: a fresh database per test on the server that ``TEST_POSTGRES_URL`` names.

``tests/support/pgserver.sh start`` starts a throwaway server and prints the variable; CI (``.ci/run``) does.
Without it the PostgreSQL cases are skipped locally and fail under CI, where none may be skipped.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import pytest

ENV = "TEST_POSTGRES_URL"


def server_url() -> str:
    url = os.environ.get(ENV)
    if not url:
        message = f'{ENV} is not set: start a server with eval "$(tests/support/pgserver.sh start)"'
        if os.environ.get("CI"):
            pytest.fail(message + " (CI runs the store tests on PostgreSQL too)")
        pytest.skip(message)
    return url


@contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty database on the test server, dropped afterwards."""
    from sqlalchemy import create_engine, make_url

    server = make_url(server_url())
    name = f"se_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE template0')
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
