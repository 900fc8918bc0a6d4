"""Schemathesis against the OpenAPI schema: generated requests (bounded) never get a 5xx."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from searchengine.config import Settings  # noqa: E402
from searchengine.server import ServerConfig, app_for  # noqa: E402


@pytest.fixture
def ieee_floats():
    """Loading a model turns on flush-to-zero for speed (models/clip.py); hypothesis needs subnormals."""
    import torch

    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(True)


def test_generated_requests_never_get_a_server_error(pics, ieee_floats):
    app = app_for(Settings.from_env(collection="c"), ServerConfig(rate_per_minute=0), model="fake:colors")
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()
        # indexing and importing read any server path an admin names: generated paths (like "/") stay out
        if operation.path in ("/api/admin/index", "/api/admin/import"):
            continue
        tried.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(checks=[not_a_server_error])

        check()
    assert "GET /api/search" in tried and "POST /api/search/image" in tried and len(tried) >= 15
