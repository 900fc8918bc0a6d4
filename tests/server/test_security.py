"""Every security rule of the HTTP API: keys, body and pixel caps, path escapes, CORS, rate limits, binding."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from searchengine.errors import ConfigError
from searchengine.server import ServerConfig
from tests.server.conftest import ADMIN, READ, auth, make_client
from tests.support import imagegen
from tests.support.fakemodel import COLORS, color_image


def some_id(client, headers=None) -> int:
    return client.get("/api/search", params={"q": "red", "k": 1}, headers=headers).json()["hits"][0]["id"]


def test_keys_401_403_and_what_each_key_opens(keyed, tmp_path):
    assert keyed.get("/api/health").status_code == 200  # liveness needs no key
    assert keyed.get("/api/search", params={"q": "red"}).status_code == 401
    assert keyed.get("/api/search", params={"q": "red"}, headers=auth("wrong")).status_code == 401
    assert keyed.get("/api/search", params={"q": "red"}, headers={"X-API-Key": "wrong"}).status_code == 401
    assert keyed.get("/api/search", params={"q": "red"}, headers=auth(READ)).status_code == 200
    assert keyed.get("/api/search", params={"q": "red"}, headers={"X-API-Key": READ}).status_code == 200
    body = {"paths": [str(tmp_path / "pics")]}
    assert keyed.post("/api/admin/index", json=body).status_code == 401
    assert keyed.post("/api/admin/index", json=body, headers=auth(READ)).status_code == 403
    assert keyed.get("/api/jobs", headers=auth(READ)).status_code == 403
    assert keyed.post("/api/admin/index", json=body, headers=auth(ADMIN)).status_code == 202
    assert keyed.get("/api/search", params={"q": "red"}, headers=auth(ADMIN)).status_code == 200  # admin reads too


def test_the_page_cookie_opens_reads_only(keyed, tmp_path):
    image_id = some_id(keyed, auth(READ))
    keyed.cookies.set("searchengine_key", ADMIN)
    assert keyed.get(f"/api/images/{image_id}/thumbnail").status_code == 200  # <img> tags send the cookie
    # a cookie never authorises a write, even an admin key's: a foreign page cannot post with it
    assert keyed.post("/api/admin/index", json={"paths": [str(tmp_path / "pics")]}).status_code == 401
    keyed.cookies.clear()
    assert keyed.get(f"/api/images/{image_id}/thumbnail").status_code == 401


def test_oversize_upload_413_declared_or_streamed(pics):
    with make_client(ServerConfig(max_upload_bytes=50_000)) as c:
        big = os.urandom(80_000)
        r = c.post("/api/search/image", files={"file": ("big.png", big, "image/png")})
        assert r.status_code == 413

        def chunks():  # no Content-Length: the body is counted as it arrives
            yield (b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
                   b"Content-Type: image/png\r\n\r\n")
            for _ in range(10):
                yield os.urandom(10_000)
            yield b"\r\n--x--\r\n"

        r = c.post("/api/search/image", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert r.status_code == 413
        small = io.BytesIO()
        Image.new("RGB", (8, 8), COLORS["red"]).save(small, "PNG")
        assert c.post("/api/search/image", files={"file": ("s.png", small.getvalue(), "image/png")}).status_code == 200


def test_decompression_bomb_upload_is_refused_without_decoding(client, tmp_path):
    bomb = imagegen.png_bomb(tmp_path / "bomb.png", side=30000).read_bytes()  # 900 MP declared, a few KB sent
    r = client.post("/api/search/image", files={"file": ("bomb.png", bomb, "image/png")})
    assert r.status_code == 422 and "pixels" in r.json()["detail"]
    r = client.post("/api/classify", files={"file": ("bomb.png", bomb, "image/png")}, data={"labels": "a,b"})
    assert r.status_code == 422
    r = client.post("/api/search/image", files={"file": ("x.png", b"not an image", "image/png")})
    assert r.status_code == 422


@pytest.mark.parametrize("path", [
    "/api/images/..%2F..%2F..%2Fetc%2Fpasswd/original",
    "/api/images/%2Fetc%2Fpasswd/original",
    "/api/images/1%2F..%2F..%2Fetc%2Fpasswd/thumbnail",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2Fetc%2Fpasswd",
    "/api/images/-1/original",
])
def test_path_escapes_are_404(client, path):
    r = client.get(path)
    assert r.status_code == 404 and b"root:" not in r.content


def test_symlink_out_of_the_root_is_not_served(client, tmp_path):
    secret = color_image(tmp_path / "outside" / "secret.png", "white")
    image_id = some_id(client)
    target = tmp_path / "pics" / "red.png"
    target.unlink()
    target.symlink_to(secret)  # swapped after indexing: the row still points at pics/red.png
    assert client.get(f"/api/images/{image_id}/original").status_code == 404
    assert client.get(f"/api/images/{image_id}/thumbnail").status_code == 404
    inside = tmp_path / "pics" / "inner.png"
    os.replace(target, tmp_path / "gone")
    color_image(inside, "red")
    target.symlink_to(inside)  # a link that stays inside the root is fine
    assert client.get(f"/api/images/{image_id}/original").status_code == 200


def test_svg_is_never_served_as_an_original(client, tmp_path):
    image_id = some_id(client)
    (tmp_path / "pics" / "red.png").write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    r = client.get(f"/api/images/{image_id}/original")
    assert r.status_code in (404, 422) and b"<svg" not in r.content


def test_cors_is_off_unless_origins_are_listed(pics):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    with make_client() as c:
        r = c.options("/api/search", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        r = c.get("/api/search", params={"q": "red"}, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    with make_client(ServerConfig(cors_origins=("https://shop.example",))) as c:
        ok = c.options("/api/search", headers={**preflight, "Origin": "https://shop.example"})
        assert ok.headers["access-control-allow-origin"] == "https://shop.example"
        foreign = c.options("/api/search", headers=preflight)
        assert "access-control-allow-origin" not in foreign.headers


def test_burst_gets_429_with_retry_after(pics):
    with make_client(ServerConfig(rate_per_minute=60, burst=5, read_keys=(READ,), admin_keys=(ADMIN,))) as c:
        codes = [c.get("/api/status", headers=auth(READ)).status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        r = c.get("/api/status", headers=auth(READ))
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 2
        assert c.get("/api/status", headers=auth(ADMIN)).status_code == 200  # another key has its own bucket
        assert c.get("/api/health").status_code == 200  # liveness is never limited


def test_caps_on_k_query_length_and_labels(pics):
    with make_client(ServerConfig(max_k=20, max_query_chars=50, max_labels=3)) as c:
        assert c.get("/api/search", params={"q": "red", "k": 21}).status_code == 422
        assert c.get("/api/search", params={"q": "red", "k": 2000}).status_code == 422
        assert c.get("/api/search", params={"q": "r" * 51}).status_code == 422
        assert c.post("/api/classify", data={"labels": "a,b,c,d", "id": "1"}).status_code == 422
        assert c.post("/api/admin/index", json={"paths": ["x"] * 101}).status_code == 422


def test_binding_beyond_loopback_needs_keys(pics):
    ServerConfig(host="127.0.0.1").check_bind()
    ServerConfig(host="::1").check_bind()
    with pytest.raises(ConfigError, match="without API keys"):
        ServerConfig(host="0.0.0.0").check_bind()
    ServerConfig(host="0.0.0.0", read_keys=("r",), admin_keys=("a",)).check_bind()
    from searchengine.cli import app

    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "-c", "c"])
    assert result.exit_code == 2 and "without API keys" in result.output


def test_originals_outside_every_root_after_a_root_is_forgotten(client, tmp_path):
    """Roots come from the store: a file whose folder was never indexed is not served."""
    from searchengine.engine import SearchEngine

    with SearchEngine.open("c") as engine:
        roots = engine.store.roots(engine.collection.id)
    assert roots == [str(Path(tmp_path / "pics"))]


def test_out_of_range_ids_are_refused_not_crashed(client):
    assert client.post("/api/search/image", data={"id": str(2**70)}).status_code == 422
    assert client.get("/api/images/" + "9" * 30).status_code == 404
    assert client.get("/api/images/\u00b2").status_code == 404  # a superscript digit is not an id
