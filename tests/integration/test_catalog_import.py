"""Catalog import end to end with the colour fake model (known answers): CSV, JSON Lines and
Parquet catalogs become products with attributes whose images roll up in search; bad rows,
failed downloads and undecodable images become per-row / per-URL errors; re-imports encode
only what changed; filters, image->text search and the CLI see the catalog's attributes."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from indexer import import_catalog, index_folder
from indexer.fetch import FetchOptions
from searchengine import SearchEngine
from searchengine.cli import app
from searchengine.errors import CatalogError
from tests.support.fakemodel import COLORS, ColorEncoder, color_image, use_color_model
from tests.support.localhttp import serving

COLL = "shop"

#: The test catalog: every image is "img/<product>-<colour>[-<n>].png", a plain colour image.
PRODUCTS = [
    dict(id="p1", images=["img/p1-white.png", "img/p1-red.png"], title="Red running shoe",
         description="Light and fast", category="shoes", brand="acme", color="red", price=30.0,
         tags=["summer", "sale"]),
    dict(id="p2", images=["img/p2-blue.png", "img/p2-blue-2.png"], title="Blue canvas bag",
         description="Roomy", category="bags", brand="zeta", color="blue", price=80.0, tags=["winter"]),
    dict(id="p3", images=["img/p3-green.png", "img/p3-red.png"], title="Green sandal",
         description="Open toe", category="shoes", brand="acme", color="green", price=45.5, tags=["summer"]),
    dict(id="p4", images=["img/p4-yellow.png"], title="Yellow boot", description="Warm",
         category="shoes", brand="zeta", color="yellow", price=60.0, tags=["winter", "summer"]),
    dict(id="p5", images=["img/p5-purple.png"], title="Purple hat", description=None,
         category="hats", brand="acme", color="purple", price=15.0, tags=["sale"]),
]
N_IMAGES = sum(len(p["images"]) for p in PRODUCTS)
CSV_COLUMNS = ["id", "images", "title", "description", "category", "brand", "color", "price", "tags"]


def colour_of(ref: str) -> str:
    return Path(ref).stem.split("-")[1]


def make_images(root: Path, products=PRODUCTS) -> None:
    """Each image its own colour and its own size, so no two files have the same content."""
    for n, ref in enumerate(ref for p in products for ref in p["images"]):
        if not (root / ref).exists():
            color_image(root / ref, colour_of(ref), size=(16 + n, 12 + n))


def expected_attributes(p: dict) -> dict[str, list[str]]:
    price = p["price"]
    return {"category": [p["category"]], "brand": [p["brand"]], "color": [p["color"]],
            "price": [str(int(price)) if float(price).is_integer() else str(price)], "tags": list(p["tags"])}


def write_catalog(path: Path, products=PRODUCTS, fmt: str | None = None) -> Path:
    fmt = fmt or path.suffix.lstrip(".")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        import csv

        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for p in products:
                w.writerow([p["id"], "|".join(p["images"]), p["title"], p["description"] or "", p["category"],
                            p["brand"], p["color"], f"{p['price']:g}", "|".join(p["tags"])])
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(p) + "\n" for p in products), encoding="utf-8")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("id", pa.string()), ("images", pa.list_(pa.string())), ("title", pa.string()),
                            ("description", pa.string()), ("category", pa.string()), ("brand", pa.string()),
                            ("color", pa.string()), ("price", pa.float64()), ("tags", pa.list_(pa.string()))])
        pq.write_table(pa.Table.from_pylist([{c: p[c] for c in schema.names} for p in products], schema=schema), path)
    else:
        raise AssertionError(fmt)
    return path


def shop(tmp_path: Path, fmt: str = "csv", products=PRODUCTS) -> Path:
    """A catalog in ``tmp_path/shop`` with its images beside it (paths relative to the catalog)."""
    make_images(tmp_path / "shop", products)
    return write_catalog(tmp_path / "shop" / f"catalog.{fmt}", products)


def edit(products=PRODUCTS, drop=(), **changes: dict) -> list[dict]:
    """A copy of the catalog without the ``drop`` ids and with ``pid={field: value}`` changes."""
    return [{**p, **changes.get(p["id"], {})} for p in products if p["id"] not in drop]


def by_product(hits) -> dict:
    return {h.product_id: h for h in hits}


def product_ids(engine, **kw) -> set[str]:
    return {h.product_id for h in engine.search(text=kw.pop("text", "something red"), k=50, **kw)}


class CountingEncoder(ColorEncoder):
    """The colour encoder, recording what goes through the model (the fingerprint probe excluded)."""

    def __init__(self) -> None:
        self.texts: list[list[str]] = []
        self.pixels = 0
        self._probing = False

    def encode_texts(self, texts):
        if not self._probing:
            self.texts.append(list(texts))
        return super().encode_texts(texts)

    def encode_pixels(self, pixels):
        if not self._probing:
            self.pixels += len(pixels)
        return super().encode_pixels(pixels)

    def probe(self):
        self._probing = True
        try:
            return super().probe()
        finally:
            self._probing = False

    def reset(self) -> None:
        self.texts, self.pixels = [], 0


@pytest.fixture
def counting(monkeypatch) -> CountingEncoder:
    import searchengine.models.clip as clip

    use_color_model(monkeypatch)
    encoder = CountingEncoder()
    monkeypatch.setattr(clip, "load_encoder", lambda spec, device="auto", precision="auto": encoder)
    return encoder


# --- 1. formats, counts, roll-up ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_import_each_format_rolls_images_up_to_products(tmp_path, monkeypatch, fmt):
    spec = use_color_model(monkeypatch)
    catalog = shop(tmp_path, fmt)
    report = import_catalog(catalog, collection=COLL, model=spec)

    assert report.catalog == str(catalog)
    assert (report.added, report.updated, report.unchanged, report.removed) == (5, 0, 0, 0)
    assert (report.row_errors, report.download_errors, report.downloaded) == (0, 0, 0)
    assert (report.images.added, report.images.encoded, report.images.failed) == (N_IMAGES, N_IMAGES, 0)
    assert report.errors == []
    assert json.loads(json.dumps(report.to_dict()))["added"] == 5  # JSON-serialisable

    root = tmp_path / "shop"
    with SearchEngine.open(COLL) as engine:
        st = engine.status()
        assert (st.products, st.images, st.texts, st.errors, st.index_vectors) == (5, N_IMAGES, 5, 0, N_IMAGES)
        assert engine.errors() == []

        hits = engine.search(text="something red", k=10)
        assert [h.product_id for h in hits].count("p1") == 1  # one hit per product
        assert len(hits) == 5 and {h.product_id for h in hits} == {p["id"] for p in PRODUCTS}
        assert {h.product_id for h in hits[:2]} == {"p1", "p3"}  # the two with a red image
        found = by_product(hits)
        for p in PRODUCTS:
            hit = found[p["id"]]
            assert hit.title == p["title"] and hit.description == p["description"]
            assert hit.attributes == expected_attributes(p)
            assert hit.images == [str(root / ref) for ref in p["images"]]  # catalog order, not score order
            assert hit.path in hit.images
        # the best image's score, and that image as the hit's path
        assert found["p1"].score == pytest.approx(1.0) and found["p1"].path == str(root / "img/p1-red.png")
        assert found["p3"].path == str(root / "img/p3-red.png")
        assert found["p2"].score == pytest.approx(0.0, abs=1e-3)

        every = engine.search(text="something red", k=50, group=False)
        assert sorted(h.path for h in every) == sorted(str(root / r) for p in PRODUCTS for r in p["images"])
        assert [h.product_id for h in every].count("p1") == 2
        assert {h.path for h in every[:2]} == {str(root / "img/p1-red.png"), str(root / "img/p3-red.png")}
        white = next(h for h in every if h.path.endswith("p1-white.png"))
        assert white.product_id == "p1" and white.score == pytest.approx(0.0, abs=1e-3)

        # the product's words reach keyword search through every one of its images
        kw = engine.search(text="canvas", mode="keyword", k=10)
        assert [h.product_id for h in kw] == ["p2"]
        assert len(engine.search(text="canvas", mode="keyword", k=10, group=False)) == 2


def test_formats_agree_on_products(tmp_path, monkeypatch):
    """The same catalog as CSV (strings, a|b cells) and Parquet (numbers, lists) stores the same products."""
    spec = use_color_model(monkeypatch)
    seen = {}
    for fmt in ("csv", "parquet"):
        import_catalog(shop(tmp_path, fmt), collection=fmt, model=spec)
        with SearchEngine.open(fmt) as engine:
            seen[fmt] = {h.product_id: (h.title, h.attributes, h.images)
                         for h in engine.search(text="anything", k=10)}
    assert seen["csv"] == seen["parquet"] and len(seen["csv"]) == 5


# --- 2. bad rows ------------------------------------------------------------------------------------------------

def test_bad_csv_rows_become_line_numbered_errors_and_good_rows_import(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    root = tmp_path / "shop"
    make_images(root)
    catalog = root / "bad.csv"
    catalog.write_text(
        "id,images,title,category,price\n"                              # 1
        "p1,img/p1-red.png,Red shoe,shoes,30\n"                          # 2
        ",img/p3-green.png,No id,shoes,10\n"                             # 3 missing id
        "p2,,Blue nothing,bags,5\n"                                      # 4 no images
        "p3,img/p3-green.png,Green sandal,shoes,45\n"                    # 5
        "p1,img/p4-yellow.png,Duplicate,shoes,1\n"                       # 6 duplicate id
        "p4,img/p4-yellow.png,Too many,shoes,1,extra\n"                  # 7 too many fields
        'p5,img/p5-purple.png,"Purple\nhat",hats,15\n'                   # 8-9 one record, two lines
        "p6,ftp://example.com/x.png,Bad scheme,hats,1\n"                 # 10 unsupported reference
        "p7,img/missing.png,Ghost,hats,1\n",                             # 11 a file that is not there
        encoding="utf-8")
    report = import_catalog(catalog, collection=COLL, model=spec)

    where = {e.path: e.error for e in report.errors}
    rows = {int(p.rsplit(":", 1)[1]): msg for p, msg in where.items() if p.startswith(f"{catalog}:")}
    assert sorted(rows) == [3, 4, 6, 7, 10]
    assert "missing product id" in rows[3]
    assert "'p2'" in rows[4] and "no images" in rows[4]
    assert "duplicate product id 'p1'" in rows[6] and "line 2" in rows[6]
    assert "6 fields" in rows[7] and "5" in rows[7]
    assert "unsupported image reference" in rows[10]
    missing = str(root / "img/missing.png")
    assert "cannot read image file" in where[missing]
    assert report.row_errors == 5 and report.added == 4  # p1, p3, p5 and p7

    with SearchEngine.open(COLL) as engine:
        stored = {e.path: e.error for e in engine.errors()}
        assert {p: m for p, m in stored.items() if p.startswith(f"{catalog}:")} == {
            f"{catalog}:{n}": m for n, m in rows.items()}
        assert missing in stored
        assert engine.status().images == 3
        assert product_ids(engine) == {"p1", "p3", "p5"}  # p7 has no indexed image to be a hit
        p5 = by_product(engine.search(text="purple", k=3))["p5"]
        assert p5.title == "Purple\nhat"
        assert engine.search_texts(text="ghost", k=10)  # p7 is stored, with its title


def test_bad_jsonl_rows_keep_their_file_line_numbers(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    root = tmp_path / "shop"
    make_images(root)
    lines = [
        json.dumps({"id": "p1", "images": ["img/p1-red.png"], "title": "Red shoe", "price": 30}),  # 1
        "{not json",                                                                                # 2
        "",                                                                                         # 3 blank
        json.dumps(["p2", "img/p2-blue.png"]),                                                      # 4
        json.dumps({"id": ["x"], "images": ["img/p2-blue.png"]}),                                   # 5
        json.dumps({"id": 7, "images": "img/p3-green.png|img/p3-red.png", "title": "Green"}),       # 6
        json.dumps({"id": "p8", "images": [3]}),                                                    # 7
    ]
    catalog = root / "c.jsonl"
    catalog.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = import_catalog(catalog, collection=COLL, model=spec)
    assert sorted(int(e.path.rsplit(":", 1)[1]) for e in report.errors) == [2, 4, 5, 7]
    assert report.added == 2
    with SearchEngine.open(COLL) as engine:
        assert sorted(e.path for e in engine.errors()) == sorted(f"{catalog}:{n}" for n in (2, 4, 5, 7))
        hit = by_product(engine.search(text="green", k=5))["7"]  # a numeric id becomes its text
        assert len(hit.images) == 2


# --- 3. re-import -----------------------------------------------------------------------------------------------

def test_reimport_encodes_only_what_changed(tmp_path, counting):
    root = tmp_path / "shop"
    catalog = shop(tmp_path, "csv")
    first = import_catalog(catalog, collection=COLL, model="fake:colors")
    assert first.added == 5
    assert counting.pixels == N_IMAGES
    assert sorted(t for call in counting.texts for t in call) == sorted(p["title"] for p in PRODUCTS)

    # unchanged: nothing goes through the model, nothing is written
    counting.reset()
    again = import_catalog(catalog, collection=COLL)
    assert (again.added, again.updated, again.unchanged, again.removed) == (0, 0, 5, 0)
    assert (again.images.encoded, again.images.added, again.images.unchanged) == (0, 0, N_IMAGES)
    assert counting.texts == [] and counting.pixels == 0

    # a changed title: only that title is encoded
    counting.reset()
    write_catalog(catalog, edit(p2={"title": "Blue leather bag"}))
    report = import_catalog(catalog, collection=COLL)
    assert (report.added, report.updated, report.unchanged, report.removed) == (0, 1, 4, 0)
    assert report.images.encoded == 0 and counting.pixels == 0
    assert counting.texts == [["Blue leather bag"]]
    with SearchEngine.open(COLL) as engine:
        texts = [t.text for t in engine.search_texts(text="blue", k=10)]
        assert texts[0] == "Blue leather bag" and "Blue canvas bag" not in texts
        assert engine.status().texts == 5
        assert by_product(engine.search(text="blue", k=1))["p2"].title == "Blue leather bag"
        assert [h.product_id for h in engine.search(text="leather", mode="keyword", k=5)] == ["p2"]
        assert engine.search(text="canvas", mode="keyword", k=5) == []

    # a changed attribute: the product is updated, nothing is encoded
    counting.reset()
    products = edit(p2={"title": "Blue leather bag"}, p4={"brand": "northwind"})
    write_catalog(catalog, products)
    report = import_catalog(catalog, collection=COLL)
    assert (report.updated, report.unchanged, report.images.encoded) == (1, 4, 0)
    assert counting.texts == [] and counting.pixels == 0
    with SearchEngine.open(COLL) as engine:
        assert product_ids(engine, filters="brand = northwind") == {"p4"}
        assert product_ids(engine, filters="brand = zeta") == {"p2"}
        assert by_product(engine.search(text="yellow", k=1))["p4"].attributes["brand"] == ["northwind"]
        assert [h.product_id for h in engine.search(text="northwind", mode="keyword", k=5)] == ["p4"]

    # a changed image: only the new image is encoded; the old one leaves the store and the results
    counting.reset()
    products = edit(products, p1={"images": ["img/p1-white.png", "img/p1-orange.png"]})
    make_images(root, products)
    write_catalog(catalog, products)
    report = import_catalog(catalog, collection=COLL)
    assert (report.updated, report.images.added, report.images.encoded) == (1, 1, 1)
    assert counting.pixels == 1 and counting.texts == []
    with SearchEngine.open(COLL) as engine:
        assert engine.store.image_by_path(engine.collection.id, str(root / "img/p1-red.png")) is None
        assert engine.status().images == N_IMAGES
        reds = engine.search(text="something red", k=50, group=False)
        assert str(root / "img/p1-red.png") not in {h.path for h in reds}
        p1 = by_product(engine.search(text="orange", k=1))["p1"]
        assert p1.score == pytest.approx(1.0)
        assert p1.images == [str(root / "img/p1-white.png"), str(root / "img/p1-orange.png")]


def test_removed_rows_remove_products_and_their_images_unless_prune_is_off(tmp_path, counting):
    root = tmp_path / "shop"
    catalog = shop(tmp_path, "jsonl")
    import_catalog(catalog, collection=COLL, model="fake:colors")
    purple = str(root / "img/p5-purple.png")

    write_catalog(catalog, edit(drop={"p5"}))
    counting.reset()
    kept = import_catalog(catalog, collection=COLL, prune=False)
    assert (kept.removed, kept.unchanged) == (0, 4)
    assert counting.texts == [] and counting.pixels == 0
    with SearchEngine.open(COLL) as engine:
        assert engine.status().products == 5 and engine.status().images == N_IMAGES
        assert by_product(engine.search(text="purple", k=1))["p5"].path == purple

    gone = import_catalog(catalog, collection=COLL)
    assert (gone.removed, gone.unchanged, gone.added, gone.updated) == (1, 4, 0, 0)
    with SearchEngine.open(COLL) as engine:
        st = engine.status()
        assert (st.products, st.images, st.texts, st.index_vectors) == (4, N_IMAGES - 1, 4, N_IMAGES - 1)
        assert engine.store.image_by_path(engine.collection.id, purple) is None
        assert purple not in {h.path for h in engine.search(text="purple", k=50, group=False)}
        assert "p5" not in product_ids(engine, text="purple")
        assert "Purple hat" not in [t.text for t in engine.search_texts(text="purple", k=10)]
        assert engine.search(text="hat", mode="keyword", k=5) == []
    # a fresh engine after the removal agrees (the saved index holds no stale vector)
    with SearchEngine.open(COLL) as engine:
        assert engine.index.ntotal == N_IMAGES - 1


def test_invalid_row_keeps_the_stored_product_and_its_error_heals(tmp_path, counting):
    catalog = shop(tmp_path, "csv")
    import_catalog(catalog, collection=COLL, model="fake:colors")

    write_catalog(catalog, edit(p3={"images": []}))  # line 4 now has no images
    counting.reset()
    report = import_catalog(catalog, collection=COLL)
    assert (report.row_errors, report.removed, report.updated, report.unchanged) == (1, 0, 0, 4)
    assert [e.path for e in report.errors] == [f"{catalog}:4"]
    assert counting.texts == [] and counting.pixels == 0
    with SearchEngine.open(COLL) as engine:
        assert [e.path for e in engine.errors()] == [f"{catalog}:4"]
        assert "no images" in engine.errors()[0].error
        assert engine.status().products == 5 and engine.status().images == N_IMAGES
        p3 = by_product(engine.search(text="green", k=1))["p3"]  # as it was
        assert p3.title == "Green sandal" and len(p3.images) == 2

    write_catalog(catalog, PRODUCTS)  # fixed
    report = import_catalog(catalog, collection=COLL)
    assert (report.row_errors, report.unchanged, report.errors) == (0, 5, [])
    with SearchEngine.open(COLL) as engine:
        assert engine.errors() == [] and engine.status().errors == 0


def test_other_owners_keep_shared_images_when_a_product_leaves(tmp_path, monkeypatch):
    """Only catalog-only images leave with their product: one another product uses, or a folder
    index brought in, stays."""
    spec = use_color_model(monkeypatch)
    root = tmp_path / "shop"
    color_image(root / "folder" / "f-green.png", "green")
    index_folder(root / "folder", collection=COLL, model=spec)
    make_images(root)
    products = [
        {"id": "a", "images": ["img/p1-red.png", "img/p2-blue.png"], "title": "A"},
        {"id": "b", "images": ["img/p2-blue.png"], "title": "B"},
        {"id": "c", "images": ["folder/f-green.png"], "title": "C"},
    ]
    catalog = write_catalog(root / "c.jsonl", products)
    report = import_catalog(catalog, collection=COLL)
    assert report.added == 3 and report.images.added == 2  # the folder's image was already indexed
    with SearchEngine.open(COLL) as engine:
        blue = engine.search(text="blue", k=1, group=False)[0]
        assert blue.path == str(root / "img/p2-blue.png")
        assert {h.product_id for h in engine.search(text="blue", k=5)} >= {"a", "b"}

    write_catalog(catalog, [products[1]])
    report = import_catalog(catalog, collection=COLL)
    assert report.removed == 2
    with SearchEngine.open(COLL) as engine:
        paths = {h.path for h in engine.search(text="anything", k=50, group=False)}
        assert paths == {str(root / "img/p2-blue.png"), str(root / "folder/f-green.png")}
        assert engine.status().products == 1


def test_folder_index_keeps_an_image_a_catalog_brought_in_first(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    root = tmp_path / "shop"
    color_image(root / "folder" / "f-red.png", "red")
    color_image(root / "folder" / "f-blue.png", "blue")
    catalog = write_catalog(root / "c.jsonl", [{"id": "a", "images": ["folder/f-red.png"], "title": "A"},
                                               {"id": "b", "images": ["folder/f-blue.png"], "title": "B"}])
    import_catalog(catalog, collection=COLL, model=spec)
    assert index_folder(root / "folder", collection=COLL).unchanged == 2
    write_catalog(catalog, [{"id": "b", "images": ["folder/f-blue.png"], "title": "B"}])
    import_catalog(catalog, collection=COLL)
    with SearchEngine.open(COLL) as engine:
        assert engine.store.image_by_path(engine.collection.id, str(root / "folder" / "f-red.png")) is not None


def test_two_catalogs_in_one_collection_prune_only_their_own(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    root = tmp_path / "shop"
    make_images(root)
    one = write_catalog(root / "one.jsonl", PRODUCTS[:3])
    two = write_catalog(root / "two.csv", PRODUCTS[3:])
    import_catalog(one, collection=COLL, model=spec)
    report = import_catalog(two, collection=COLL)
    assert (report.added, report.removed) == (2, 0)
    write_catalog(one, PRODUCTS[:2])
    report = import_catalog(one, collection=COLL)
    assert (report.removed, report.unchanged) == (1, 2)
    with SearchEngine.open(COLL) as engine:
        assert product_ids(engine) == {"p1", "p2", "p4", "p5"}


# --- 4. URL images ----------------------------------------------------------------------------------------------

def _png(colour: str, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, COLORS[colour]).save(buf, format="PNG")
    return buf.getvalue()


def _noise_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


MAX_BYTES = 4000
BIG = _noise_png()
assert len(BIG) > MAX_BYTES and len(_png("red")) < MAX_BYTES


class Handler(BaseHTTPRequestHandler):
    server: "Server"

    def log_message(self, *args) -> None:
        pass

    def send(self, body: bytes, kind: str = "image/png") -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        with self.server.lock:
            self.server.hits[path] += 1
        if path == "/red.png":
            self.send(_png("red"))
        elif path == "/green.png":
            self.send(_png("green", (9, 9)))
        elif path == "/later.png" and self.server.later_ok:
            self.send(_png("black"))
        elif path == "/slow.png":
            time.sleep(1.0)
            self.send(_png("blue"))
        elif path == "/big.png":
            self.send(BIG)
        elif path == "/page":
            self.send(b"<html><body>not an image</body></html>", "text/html; charset=utf-8")
        elif path == "/fake.png":
            self.send(b"these bytes are not an image at all" * 4)
        else:
            self.send_error(404)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.later_ok = False
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address) -> None:
        pass  # the client hung up on the slow route: expected


@pytest.fixture
def server(monkeypatch):
    with serving(Server(), monkeypatch) as srv:
        yield srv


FAST = FetchOptions(timeout=0.3, retries=0, backoff=0, max_bytes=MAX_BYTES)


def url_products(base: str) -> list[dict]:
    return [
        {"id": "u1", "images": [f"{base}/red.png"], "title": "Red mug", "category": "mugs"},
        {"id": "u2", "images": [f"{base}/missing.png"], "title": "Purple lamp", "category": "lamps"},
        {"id": "u3", "images": [f"{base}/slow.png"], "title": "Slow thing"},
        {"id": "u4", "images": [f"{base}/big.png"], "title": "Big thing"},
        {"id": "u5", "images": [f"{base}/page"], "title": "Page thing"},
        {"id": "u6", "images": [f"{base}/fake.png"], "title": "Fake thing"},
        {"id": "u7", "images": [f"{base}/missing.png", f"{base}/green.png"], "title": "Green cup"},
    ]


def test_url_images_download_once_with_per_url_errors(tmp_path, monkeypatch, server):
    spec = use_color_model(monkeypatch)
    base = server.url
    catalog = write_catalog(tmp_path / "urls.jsonl", url_products(base))
    started = time.perf_counter()
    report = import_catalog(catalog, collection=COLL, model=spec, fetch_options=FAST)
    assert time.perf_counter() - started < 5

    errors = {e.path: e.error for e in report.errors}
    assert set(errors) == {f"{base}/{p}" for p in ("missing.png", "slow.png", "big.png", "page", "fake.png")}
    for url, error in errors.items():
        assert url in error, f"the error for {url} does not name it: {error!r}"
    assert "404" in errors[f"{base}/missing.png"]
    assert "timed out" in errors[f"{base}/slow.png"]
    assert "limit" in errors[f"{base}/big.png"] and f"{len(BIG):,}" in errors[f"{base}/big.png"]
    assert "text/html" in errors[f"{base}/page"]
    assert "not an image" in errors[f"{base}/fake.png"]  # downloaded, then rejected by the decoder
    assert report.download_errors == 4 and report.images.failed == 1
    assert report.downloaded == 3  # red, green and the fake one
    assert (report.added, report.images.added, report.images.encoded) == (7, 2, 2)

    with SearchEngine.open(COLL) as engine:
        assert {e.path: e.error for e in engine.errors()} == errors
        st = engine.status()
        assert (st.products, st.images, st.texts) == (7, 2, 7)
        red = by_product(engine.search(text="something red", k=10))["u1"]
        assert red.score == pytest.approx(1.0) and red.title == "Red mug" and len(red.images) == 1
        assert Image.open(red.path).getpixel((0, 0)) == COLORS["red"]  # the downloaded file
        green = by_product(engine.search(text="green", k=10))["u7"]
        assert green.images == [green.path]  # the failed image is not listed
        # a product whose only image failed is stored, and found by its title (image->text side)
        lamp = engine.search_texts(text="purple", k=1)[0]
        assert (lamp.text, lamp.product_id) == ("Purple lamp", "u2")
    assert server.hits["/red.png"] == 1 and server.hits["/fake.png"] == 1

    # the second import reads the cache: no request for what was downloaded, nothing encoded
    again = import_catalog(catalog, collection=COLL, fetch_options=FAST)
    assert server.hits["/red.png"] == 1 and server.hits["/green.png"] == 1 and server.hits["/fake.png"] == 1
    assert (again.downloaded, again.images.encoded, again.unchanged) == (0, 0, 7)
    assert (again.images.known_failures, again.images.failed) == (1, 0)  # the fake image is not decoded again
    assert {e.path for e in again.errors} == set(errors) - {f"{base}/fake.png"}  # failed downloads are retried
    with SearchEngine.open(COLL) as engine:
        assert {e.path for e in engine.errors()} == set(errors)  # still failing, still reported

    # refresh downloads again (same content: nothing to encode)
    fresh = import_catalog(catalog, collection=COLL, fetch_options=FAST, refresh=True)
    assert server.hits["/red.png"] == 2 and server.hits["/green.png"] == 2 and server.hits["/fake.png"] == 2
    assert fresh.downloaded == 3 and fresh.images.encoded == 0
    with SearchEngine.open(COLL) as engine:
        assert {e.path for e in engine.errors()} == set(errors)
        assert engine.status().images == 2


def test_url_errors_clear_when_the_url_works_or_leaves(tmp_path, monkeypatch, server):
    spec = use_color_model(monkeypatch)
    base = server.url
    products = [
        {"id": "u1", "images": [f"{base}/red.png"], "title": "Red mug"},
        {"id": "u2", "images": [f"{base}/later.png"], "title": "Black lamp"},
        {"id": "u3", "images": [f"{base}/fake.png"], "title": "Fake thing"},
        {"id": "u4", "images": [f"{base}/missing.png"], "title": "Missing thing"},
    ]
    catalog = write_catalog(tmp_path / "urls.jsonl", products)
    import_catalog(catalog, collection=COLL, model=spec, fetch_options=FAST)
    with SearchEngine.open(COLL) as engine:
        assert {e.path for e in engine.errors()} == {f"{base}/later.png", f"{base}/fake.png", f"{base}/missing.png"}

    server.later_ok = True
    report = import_catalog(catalog, collection=COLL, fetch_options=FAST)
    assert report.download_errors == 1 and report.downloaded == 1
    with SearchEngine.open(COLL) as engine:
        assert {e.path for e in engine.errors()} == {f"{base}/fake.png", f"{base}/missing.png"}
        assert by_product(engine.search(text="black", k=1))["u2"].score == pytest.approx(1.0)

    write_catalog(catalog, products[:2])  # the products with failing images leave
    report = import_catalog(catalog, collection=COLL, fetch_options=FAST)
    assert report.removed == 2 and report.errors == []
    with SearchEngine.open(COLL) as engine:
        assert engine.errors() == []
        assert engine.status().errors == 0


def test_local_image_errors_leave_with_their_product(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    root = tmp_path / "shop"
    color_image(root / "red.png", "red")
    (root / "broken.png").write_bytes(b"not a png")
    products = [{"id": "a", "images": ["red.png"], "title": "Red"},
                {"id": "b", "images": ["broken.png"], "title": "Broken"}]
    catalog = write_catalog(root / "c.jsonl", products)
    report = import_catalog(catalog, collection=COLL, model=spec)
    assert [e.path for e in report.errors] == [str(root / "broken.png")]
    write_catalog(catalog, products[:1])
    report = import_catalog(catalog, collection=COLL)
    assert report.removed == 1
    with SearchEngine.open(COLL) as engine:
        assert engine.errors() == []


# --- 5. filters -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_filters_on_catalog_attributes(tmp_path, monkeypatch, fmt):
    spec = use_color_model(monkeypatch)
    import_catalog(shop(tmp_path, fmt), collection=COLL, model=spec)
    with SearchEngine.open(COLL) as engine:
        def ids(filters, **kw):
            hits = engine.search(text="something red", k=20, filters=filters, **kw)
            return [h.product_id for h in hits]

        assert sorted(ids('category = "shoes" and price < 50')) == ["p1", "p3"]
        assert sorted(ids({"price": (None, 50)})) == ["p1", "p3", "p5"]
        assert sorted(ids({"price": (30, 45.5)})) == ["p1", "p3"]  # inclusive
        assert sorted(ids(["brand = acme", {"tags": ["summer"]}])) == ["p1", "p3"]
        assert sorted(ids("tags = sale")) == ["p1", "p5"]
        assert sorted(ids("category = SHOES and not tags = winter")) == ["p1", "p3"]
        assert sorted(ids('title ~ "boot"')) == ["p4"]
        assert sorted(ids("product in (p2, p5)")) == ["p2", "p5"]
        assert ids("price > 1000") == []
        # filters apply to each image, ranking stays: the red image of p1 first among acme summer
        top = engine.search(text="something red", k=1, filters={"brand": "acme", "category": "shoes"})
        assert top[0].product_id in ("p1", "p3") and top[0].score == pytest.approx(1.0)
        every = engine.search(text="something red", k=20, filters="category = shoes", group=False)
        assert len(every) == 5 and {h.product_id for h in every} == {"p1", "p3", "p4"}
        kw = engine.search(text="sandal", mode="keyword", k=5, filters="price < 50")
        assert [h.product_id for h in kw] == ["p3"]
        assert engine.search(text="sandal", mode="keyword", k=5, filters="price > 50") == []


# --- 6. image->text and text->text -------------------------------------------------------------------------------

def test_image_to_text_and_text_to_text(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    import_catalog(shop(tmp_path, "jsonl"), collection=COLL, model=spec)
    query = color_image(tmp_path / "query" / "yellow.png", "yellow", size=(33, 21))
    with SearchEngine.open(COLL) as engine:
        hits = engine.search_texts(image=query, k=3)
        assert len(hits) == 3
        assert (hits[0].text, hits[0].product_id, hits[0].field) == ("Yellow boot", "p4", "title")
        assert hits[0].score == pytest.approx(1.0) and hits[1].score < 0.5
        assert hits[0].image_id is None and hits[0].path is None
        hits = engine.search_texts(text="blue thing", k=2)
        assert (hits[0].text, hits[0].product_id) == ("Blue canvas bag", "p2")
        assert len(engine.search_texts(text="blue thing", k=50)) == 5
        assert [t.product_id for t in engine.search_texts(text="blue thing", k=5, field="title")][0] == "p2"
        assert engine.search_texts(text="blue thing", k=5, field="caption") == []


# --- 7. the CLI -------------------------------------------------------------------------------------------------

def test_cli_import_and_search(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    monkeypatch.chdir(tmp_path)
    catalog = shop(tmp_path, "csv")
    runner = CliRunner()

    out = runner.invoke(app, ["import", str(catalog), "-c", "shop", "--json", "--model", spec])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert (report["added"], report["row_errors"], report["images"]["encoded"]) == (5, 0, N_IMAGES)
    assert report["catalog"] == str(catalog) and report["errors"] == []

    out = runner.invoke(app, ["import", str(catalog), "-c", "shop", "--json"])  # the collection's model
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["unchanged"] == 5

    out = runner.invoke(app, ["import", str(catalog), "-c", "shop"])
    assert out.exit_code == 0 and "0 products added" in out.stdout and "5 unchanged" in out.stdout

    out = runner.invoke(app, ["search", "red", "-c", "shop", "--json", "--where", "price < 50"])
    assert out.exit_code == 0, out.output
    hits = json.loads(out.stdout)
    assert {h["product_id"] for h in hits} == {"p1", "p3", "p5"}
    assert {h["product_id"] for h in hits[:2]} == {"p1", "p3"} and hits[0]["score"] == pytest.approx(1.0)
    p1 = next(h for h in hits if h["product_id"] == "p1")
    assert p1["title"] == "Red running shoe" and p1["attributes"]["tags"] == ["summer", "sale"]
    assert p1["images"] == [str(tmp_path / "shop" / r) for r in PRODUCTS[0]["images"]]

    out = runner.invoke(app, ["search", "red", "-c", "shop", "--json", "--images", "--filter", "brand=acme"])
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.stdout)) == 5  # every image of p1, p3, p5

    out = runner.invoke(app, ["search", "red", "-c", "shop"])
    assert out.exit_code == 0 and "[p1] Red running shoe" in out.stdout

    image = color_image(tmp_path / "q" / "green.png", "green", size=(31, 17))
    out = runner.invoke(app, ["search", "--to", "text", str(image), "-c", "shop", "--json"])
    assert out.exit_code == 0, out.output
    texts = json.loads(out.stdout)
    assert texts[0]["text"] == "Green sandal" and texts[0]["product_id"] == "p3" and texts[0]["field"] == "title"

    out = runner.invoke(app, ["search", "--to", "text", "blue thing", "-c", "shop", "--json", "-k", "1"])
    assert out.exit_code == 0 and [t["product_id"] for t in json.loads(out.stdout)] == ["p2"]


def test_cli_import_errors(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    runner = CliRunner()
    missing = tmp_path / "nope.csv"
    out = runner.invoke(app, ["import", str(missing), "-c", "fresh", "--model", spec])
    assert out.exit_code == 2
    assert "no such catalog file" in out.stderr and str(missing) in out.stderr and "Traceback" not in out.output

    root = tmp_path / "shop"
    make_images(root)
    no_id = root / "noid.csv"
    no_id.write_text("sku_code,images,title\nA1,img/p1-red.png,Red\n", encoding="utf-8")
    out = runner.invoke(app, ["import", str(no_id), "-c", "fresh", "--model", spec])
    assert out.exit_code == 2 and "--id-column" in out.stderr and "sku_code" in out.stderr
    out = runner.invoke(app, ["import", str(no_id), "-c", "fresh", "--id-column", "sku", "--model", spec])
    assert out.exit_code == 2 and "'sku'" in out.stderr and "--id-column" in out.stderr
    # nothing was created by the failed runs
    out = runner.invoke(app, ["status", "-c", "fresh"])
    assert out.exit_code == 3

    out = runner.invoke(app, ["import", str(no_id), "-c", "fresh", "--id-column", "sku_code", "--model", spec,
                              "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["added"] == 1

    with pytest.raises(CatalogError, match="no such catalog file"):
        import_catalog(missing, collection="other", model=spec)
