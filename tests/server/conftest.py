"""A colour collection behind the HTTP app: the fake colour model makes every right answer known."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the server extra is part of the dev install")

from fastapi.testclient import TestClient  # noqa: E402

from indexer import index_folder  # noqa: E402
from searchengine.config import Settings  # noqa: E402
from searchengine.server import ServerConfig, app_for  # noqa: E402
from tests.support.fakemodel import color_folder, use_color_model  # noqa: E402

READ, ADMIN = "read-key-123", "admin-key-456"


@pytest.fixture
def pics(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    folder = color_folder(tmp_path / "pics")
    (folder / "red.txt").write_text("a red square")  # a sidecar caption
    (folder / "green.json").write_text('{"caption": "a green field", "season": "spring"}')
    (folder / "blue.json").write_text('{"season": "winter"}')
    index_folder([folder], collection="c", model=spec)
    return folder


def make_client(config: ServerConfig | None = None, collection: str = "c", **kw) -> TestClient:
    settings = Settings.from_env(collection=collection)
    app = app_for(settings, config or ServerConfig(**kw), model="fake:colors")
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture
def client(pics):
    """No keys (loopback only): everything is open."""
    with make_client() as c:
        yield c


@pytest.fixture
def keyed(pics):
    with make_client(ServerConfig(read_keys=(READ,), admin_keys=(ADMIN,))) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
