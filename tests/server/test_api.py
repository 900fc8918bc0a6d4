"""The HTTP API end to end over a colour collection (known answers), through FastAPI's TestClient."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

from PIL import Image

from tests.server.conftest import make_client
from tests.support.fakemodel import COLORS, color_image


def png(name: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), COLORS[name]).save(buf, "PNG")
    return buf.getvalue()


def ids_by_name(client) -> dict[str, int]:
    hits = client.get("/api/search", params={"q": "anything", "k": 50}).json()["hits"]
    return {Path(h["path"]).stem: h["id"] for h in hits}


def test_health_status_and_capabilities(client):
    assert client.get("/api/health").json() == {"status": "ok"}
    status = client.get("/api/status").json()
    assert status["images"] == len(COLORS) and status["model"] == "fake:colors"
    assert "data_dir" not in status and "database" not in status  # server paths stay private
    caps = client.get("/api/capabilities").json()
    assert caps["vqa"] is False and caps["max_k"] == 200


def test_text_search_get_and_post(client):
    hits = client.get("/api/search", params={"q": "a blue thing", "k": 3}).json()["hits"]
    assert Path(hits[0]["path"]).name == "blue.png" and len(hits) == 3
    assert hits[0]["thumbnail"] == f"/api/images/{hits[0]['id']}/thumbnail"
    posted = client.post("/api/search", json={"q": "a blue thing", "k": 3}).json()["hits"]
    assert [h["id"] for h in posted] == [h["id"] for h in hits]


def test_filters_keyword_mode_and_facets(client):
    facets = client.get("/api/facets").json()
    assert {f["value"] for f in facets["season"]} == {"spring", "winter"}
    hits = client.post("/api/search", json={"q": "green", "filter": "season = winter"}).json()["hits"]
    assert [Path(h["path"]).name for h in hits] == ["blue.png"]  # the only winter image, whatever the words
    kw = client.get("/api/search", params={"q": "field", "mode": "keyword"}).json()["hits"]
    assert [Path(h["path"]).name for h in kw] == ["green.png"]  # its caption says "field"


def test_image_search_by_upload_and_by_id(client):
    hits = client.post("/api/search/image", files={"file": ("q.png", png("yellow"), "image/png")},
                       data={"k": "2"}).json()["hits"]
    assert Path(hits[0]["path"]).name == "yellow.png"
    ids = ids_by_name(client)
    by_id = client.post("/api/search/image", data={"id": str(ids["purple"]), "k": "1"}).json()["hits"]
    assert by_id[0]["id"] == ids["purple"]
    assert client.post("/api/search/image", data={"k": "1"}).status_code == 422  # neither file nor id


def test_similar_details_and_image_to_text(client):
    ids = ids_by_name(client)
    similar = client.get(f"/api/images/{ids['red']}/similar", params={"k": 3}).json()["hits"]
    assert len(similar) == 3 and ids["red"] not in [h["id"] for h in similar]
    detail = client.get(f"/api/images/{ids['red']}").json()
    assert detail["caption"] == "a red square" and detail["width"] == 24 and "score" not in detail
    texts = client.get(f"/api/images/{ids['red']}/texts", params={"k": 1}).json()["texts"]
    assert texts[0]["text"] == "a red square"
    uploaded = client.post("/api/image-to-text", files={"file": ("q.png", png("red"), "image/png")},
                           data={"k": "1"}).json()["texts"]
    assert uploaded[0]["text"] == "a red square"


def test_classify_probabilities_sum_to_one(client):
    out = client.post("/api/classify", files={"file": ("q.png", png("green"), "image/png")},
                      data={"labels": "red, green, blue"}).json()["labels"]
    assert out[0]["label"] == "green" and abs(sum(x["probability"] for x in out) - 1) < 1e-5
    assert client.post("/api/classify", data={"labels": "red", "id": "1"}).status_code == 422  # one label


def test_thumbnail_is_made_once_and_original_is_served_typed(client, tmp_path):
    ids = ids_by_name(client)
    r = client.get(f"/api/images/{ids['orange']}/thumbnail", params={"size": 128})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert Image.open(io.BytesIO(r.content)).size == (24, 16)  # never upscaled
    cached = list((tmp_path / "home" / "collections" / "c" / "thumbs").rglob("*-128.jpg"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert client.get(f"/api/images/{ids['orange']}/thumbnail", params={"size": 128}).content == r.content
    assert cached[0].stat().st_mtime_ns == stamp  # served from the cache
    assert client.get(f"/api/images/{ids['orange']}/thumbnail", params={"size": 300}).status_code == 422
    orig = client.get(f"/api/images/{ids['orange']}/original")
    assert orig.status_code == 200 and orig.headers["content-type"] == "image/png"
    assert orig.headers["x-content-type-options"] == "nosniff"
    assert orig.content == (tmp_path / "pics" / "orange.png").read_bytes()


def test_unknown_ids_are_404(client):
    assert client.get("/api/images/999999").status_code == 404
    assert client.get("/api/images/999999/thumbnail").status_code == 404
    assert client.get("/api/images/abc/original").status_code == 404
    assert client.get("/api/jobs/77").status_code == 404


def _wait(client, job_id: int) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_index_job_swaps_in_the_new_index_while_searches_go_on(client, tmp_path):
    more = tmp_path / "more"
    for i in range(12):
        color_image(more / f"red{i}.png", "red", size=(30 + i, 20))
    errors: list[BaseException] = []
    seen: set[int] = set()
    stop = threading.Event()

    def searching():
        while not stop.is_set():
            try:
                r = client.get("/api/search", params={"q": "red", "k": 20})
                assert r.status_code == 200, r.text
                seen.update(h["id"] for h in r.json()["hits"])
            except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
                errors.append(exc)
                return

    readers = [threading.Thread(target=searching) for _ in range(3)]
    for t in readers:
        t.start()
    r = client.post("/api/admin/index", json={"paths": [str(more)]})
    assert r.status_code == 202 and r.headers["location"] == f"/api/jobs/{r.json()['id']}"
    job = _wait(client, r.json()["id"])
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[0]
    assert job["state"] == "done" and job["done"] == job["total"] == 12 and job["result"]["added"] == 12
    hits = client.get("/api/search", params={"q": "red", "k": 20, "min_score": 0.5}).json()["hits"]
    assert len(hits) == 13  # no restart needed
    live = {h["id"] for h in client.get("/api/search", params={"q": "x", "k": 50}).json()["hits"]}
    assert seen <= live  # every id any reader saw is a live image

    r = client.post("/api/admin/remove", json={"paths": [str(more)]})
    assert _wait(client, r.json()["id"])["result"]["removed"] == 12
    hits = client.get("/api/search", params={"q": "red", "k": 20, "min_score": 0.5}).json()["hits"]
    assert [Path(h["path"]).name for h in hits] == ["red.png"]
    assert client.get("/api/jobs").json()["jobs"][0]["kind"] == "remove"


def test_a_failed_job_reports_its_error(client, tmp_path):
    assert client.post("/api/admin/index", json={"paths": [str(tmp_path / "nope")]}).status_code == 400
    bad = tmp_path / "bad.csv"
    bad.write_text("not,a\ncatalog,at all\n")
    r = client.post("/api/admin/import", json={"catalog": str(bad)})
    assert r.status_code == 400 and "column" in r.json()["detail"]


def test_import_job_brings_in_products(client, tmp_path):
    color_image(tmp_path / "shop" / "p1.png", "purple")
    (tmp_path / "shop" / "catalog.csv").write_text("id,title,image,price\nsku-1,Purple scarf,p1.png,12\n")
    r = client.post("/api/admin/import", json={"catalog": str(tmp_path / "shop" / "catalog.csv")})
    job = _wait(client, r.json()["id"])
    assert job["state"] == "done", job
    hits = client.post("/api/search", json={"q": "purple", "filter": "price < 20"}).json()["hits"]
    assert [h["product_id"] for h in hits] == ["sku-1"] and hits[0]["title"] == "Purple scarf"
    assert client.get(f"/api/images/{hits[0]['id']}/original").status_code == 200  # the catalog's folder is a root


def test_serving_before_the_collection_exists(pics, tmp_path):
    with make_client(collection="fresh") as fresh:
        assert fresh.get("/api/status").status_code == 404
        job = _wait(fresh, fresh.post("/api/admin/index", json={"paths": [str(pics)]}).json()["id"])
        assert job["state"] == "done", job
        assert fresh.get("/api/status").json()["images"] == len(COLORS)


def test_web_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "<form id=\"search\"" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/api/openapi.json").json()["info"]["title"] == "searchengine"


def test_caption_ask_and_rerank_with_configured_models(pics, tmp_path, monkeypatch):
    """Tiny random BLIP models: the plumbing runs end to end; answers are cached per question."""
    from tests.support.tinyblip import make_tiny_blip

    blip = {task: str(make_tiny_blip(tmp_path / task, task)) for task in ("caption", "vqa", "itm")}
    monkeypatch.setenv("SEARCHENGINE_CAPTION_MODEL", blip["caption"])
    monkeypatch.setenv("SEARCHENGINE_VQA_MODEL", blip["vqa"])
    monkeypatch.setenv("SEARCHENGINE_RERANK_MODEL", blip["itm"])
    from searchengine.server import ServerConfig

    with make_client(ServerConfig.from_env()) as c:
        assert c.get("/api/capabilities").json()["vqa"] is True
        ids = ids_by_name(c)
        caption = c.post(f"/api/images/{ids['red']}/caption").json()["caption"]
        assert isinstance(caption, str)
        answer = c.post(f"/api/images/{ids['red']}/ask", json={"question": "what colour?"}).json()["answer"]
        assert isinstance(answer, str)
        hits = c.post("/api/search", json={"q": "red", "k": 2, "rerank": True, "rerank_top": 4,
                                           "ask": "what colour?"}).json()["hits"]
        assert len(hits) == 2 and all(0 <= h["score"] <= 1 and h["first_score"] is not None for h in hits)
        assert all(isinstance(h["answer"], str) for h in hits)
    with make_client() as plain:  # not configured: a clear 400, never a 5xx
        r = plain.post("/api/search", json={"q": "red", "rerank": True})
        assert r.status_code == 400 and "--rerank-model" in r.json()["detail"]
        assert plain.post(f"/api/images/{ids['red']}/ask", json={"question": "why?"}).status_code == 400
