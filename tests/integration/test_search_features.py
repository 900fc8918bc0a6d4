"""Search features end to end, with the colour fake model (known answers).

- filters: the SQL compiler (``store.filter_condition``) against the reference semantics
  (``filters.evaluate``) on a corpus of sidecar attributes, EXIF dates and catalog products,
  and ``engine.search`` with filters against a brute-force top k, for Flat and HNSW indexes;
- folder/type/taken filters, sidecars (captions, attributes, re-indexing a sidecar edit),
  hybrid ranking, sort by date, min_score, dedup, composed queries, OCR and the CLI.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from typer.testing import CliRunner

from indexer import import_catalog, index_folder
from searchengine import SearchEngine
from searchengine.cli import app
from searchengine.errors import QueryError
from searchengine.filters import evaluate, parse_where
from searchengine.store import filter_condition
from tests.support.fakemodel import COLORS, NAMES, use_color_model

EXIF_IFD, DATE_ORIGINAL = 0x8769, 0x9003


# -- helpers ------------------------------------------------------------------------------


def save_image(path: Path, colour: str, size=(24, 16), date: str | None = None) -> Path:
    """A solid-colour image in the format of its suffix, with an EXIF DateTimeOriginal when ``date``
    (``YYYY:MM:DD HH:MM:SS``) is given (as tests/unit/test_taken_at.py writes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, COLORS[colour])
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[path.suffix.lower()]
    kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    if date is not None:
        exif = Image.Exif()
        exif.get_ifd(EXIF_IFD)[DATE_ORIGINAL] = date
        kwargs["exif"] = exif.tobytes()
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    path.write_bytes(buf.getvalue())
    return path


def as_stored(value) -> str:
    """An attribute value as the store keeps and shows it: numbers without a needless ``.0``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        value = float(value)
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value).strip()


def names(hits) -> list[str]:
    return [os.path.basename(h.path) for h in hits]


def folders(hits) -> list[str]:
    return [os.path.basename(os.path.dirname(h.path)) for h in hits]


def bump(path: Path, text: str) -> None:
    """Rewrite a sidecar and move its mtime on, so a re-index sees the change whatever the clock."""
    before = path.stat().st_mtime_ns if path.exists() else time.time_ns()
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before + 5_000_000_000, before + 5_000_000_000))


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


# -- the corpus for filters -------------------------------------------------------------------

CATEGORIES = ["shoes", "Shoes", "SHOES", "bags", "Bags", " hats ", "hats", "Shoes & Bags"]
TAGS = ["Red", "red", "Summer", "sale", "SALE", "new_in", "50%", "x_y", "winter"]
BRANDS = ["Acme", "acme", "ZETA", "zeta co", "7", 7, "cme"]
PRICES = [5, 10, 10.0, 12.5, 49.99, 50, 50.0, 120, 0, -3, "12.50", "n/a", "", "1e3", [10, 20], [5, "cheap"]]
FOLDERS = ["shoes", "shoes/sale", "shoes2", "bags", "misc/deep/er", "misc"]
EXTS = [".png", ".jpg", ".jpeg", ".webp", ".PNG"]
WORDS = ["sunny", "beach", "city", "night", "forest", "red", "market"]


@dataclass
class Corpus:
    data_dir: Path
    photos: Path
    #: path -> field -> values (the reference record for filters.evaluate)
    records: dict[str, dict[str, list]] = field(default_factory=dict)
    colours: dict[str, str] = field(default_factory=dict)


def _record_attrs(record: dict, attrs: dict) -> None:
    for key, values in attrs.items():
        values = values if isinstance(values, list) else [values]
        stored = [as_stored(v) for v in values if not isinstance(v, (list, dict)) and as_stored(v)]
        if stored:
            record.setdefault(key.strip().casefold(), []).extend(stored)


def _build_corpus(root: Path) -> Corpus:
    rng = random.Random(20240607)
    corpus = Corpus(data_dir=root / "data", photos=root / "photos")
    for i in range(80):
        folder = corpus.photos / rng.choice(FOLDERS)
        ext = EXTS[i % len(EXTS)]
        colour = rng.choice(NAMES)
        path = folder / f"img{i:02d}_{colour}{ext}"
        date = None
        if rng.random() < 0.55:
            date = f"{rng.randint(2018, 2023)}:{rng.randint(1, 12):02d}:{rng.randint(1, 28):02d} " \
                   f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
        size = (20 + i % 9, 14 + i % 5)
        save_image(path, colour, size, date)
        rec: dict[str, list] = {"path": [str(path)], "type": [{"jpeg": "jpg"}.get(ext[1:].lower(), ext[1:].lower())],
                                "width": [size[0]], "height": [size[1]], "size": [path.stat().st_size]}
        if date is not None:
            rec["taken"] = [date.replace(":", "-", 2).replace(" ", "T")]
        caption = None
        if rng.random() < 0.3:
            caption = " ".join(rng.sample(WORDS, 2))
            path.with_suffix(".txt").write_text(f"  {caption.title()}\n", encoding="utf-8")
            caption = caption.title()
        if rng.random() < 0.85:
            obj: dict = {}
            if rng.random() < 0.9:
                obj["category"] = rng.choice(CATEGORIES)
            if rng.random() < 0.85:
                obj["price"] = rng.choice(PRICES)
            if rng.random() < 0.7:
                obj["tags"] = rng.sample(TAGS, rng.randint(0, 3))
            if rng.random() < 0.7:
                obj["Brand" if rng.random() < 0.3 else "brand"] = rng.choice(BRANDS)
            if rng.random() < 0.2:
                obj["dims"] = {"w": rng.choice([1, 2.5, "wide"])}
            if caption is None and rng.random() < 0.3:
                obj["caption"] = caption = rng.choice(WORDS) + " sidecar"
            path.with_suffix(".json").write_text(json.dumps(obj), encoding="utf-8")
            flat = {k: v for k, v in obj.items() if k not in ("caption", "dims")}
            flat.update({f"dims.{k}": v for k, v in obj.get("dims", {}).items()})
            _record_attrs(rec, flat)
        if caption is not None:
            rec["caption"] = [caption]
        corpus.records[str(path)] = rec
        corpus.colours[str(path)] = colour

    # a catalog: products over some folder images (one image in two products) and an image of its own
    paths = sorted(corpus.records)
    extra = save_image(root / "catalog-images" / "only-in-catalog.png", "purple")
    corpus.records[str(extra)] = {"path": [str(extra)], "type": ["png"], "width": [24], "height": [16],
                                  "size": [extra.stat().st_size]}
    corpus.colours[str(extra)] = "purple"
    products = [
        ("P1", [paths[0], paths[1]], "Red Runner", "A light running shoe", "Shoes", "49.5", "mesh", "sale|new"),
        ("P2", [paths[2]], "Blue Tote", "Leather tote bag", "bags", "120", "Leather", ""),
        ("P3", [paths[3], paths[0]], "Trail Boot", "Waterproof boot", "SHOES", "89", "leather", "winter"),
        ("P4", [str(extra)], "Purple Cap", "Cotton cap", "hats", "15.0", "cotton", "summer|SALE"),
        ("P5", [paths[10], paths[11], paths[12]], "Green Bag", "", "bags", "n/a", "canvas", ""),
    ]
    catalog = root / "catalog.csv"
    with open(catalog, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "images", "title", "description", "category", "price", "material", "tags"])
        for pid, imgs, title, desc, cat, price, material, tags in products:
            writer.writerow([pid, "|".join(imgs), title, desc, cat, price, material, tags])
            for img in imgs:
                rec = corpus.records[img]
                rec.setdefault("product", []).append(pid)
                rec.setdefault("title", []).append(title)
                if desc:
                    rec.setdefault("description", []).append(desc)
                _record_attrs(rec, {"category": cat, "price": price, "material": material,
                                    "tags": [t for t in tags.split("|") if t]})
    for name, factory in (("flat", "Flat"), ("hnsw", "HNSW32")):
        index_folder(corpus.photos, collection=name, model="fake:colors", data_dir=corpus.data_dir,
                     index_factory=factory)
        report = import_catalog(catalog, collection=name, data_dir=corpus.data_dir)
        assert report.added == 5 and not report.errors, report.to_dict()
    return corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEARCHENGINE_WORKERS", "0")
        mp.delenv("SEARCHENGINE_HOME", raising=False)
        use_color_model(mp)
        return _build_corpus(tmp_path_factory.mktemp("corpus"))


# -- random where-expressions -------------------------------------------------------------------

STRING_VALUES = {
    "category": ["shoes", "SHOES", "bags", "hats", "sho", "& bags", "a", "z"],
    "tags": ["red", "RED", "sale", "new_in", "50%", "_", "%", "x_y", "summer", "e"],
    "brand": ["acme", "ACME", "cme", "zeta co", "zeta", "7", "b"],
    "price": ["12.50", "n/a", "5", "50", "1e3", "cheap", "1"],
    "type": ["png", "PNG", "jpg", "webp", "p", "j"],  # "jpeg" is an alias of jpg (tested separately)
    "taken": ["2020-01-01", "2021-06-15T12:00:00", "2019", "2022-12", "2023-01-01T00:00:00", "-0", "t1"],
    "path": ["shoes", "SHOES/SALE", "shoes2/", "misc/deep", "/img0", "_red", "bags", ".PNG"],
    "caption": ["sunny", "Beach", "sidecar", "red market", "n"],
    "material": ["leather", "LEATHER", "mesh", "cot"],
    "title": ["red runner", "Boot", "bag", "r"],
    "description": ["boot", "Leather tote bag", "o"],
    "product": ["p1", "P3", "p"],
    "dims.w": ["wide", "2.5", "1"],
}
#: width and height are left out: JPEGs store their draft-decoded size (see test_jpeg_dimensions...)
NUMBER_VALUES = {
    "price": [0, 5, 10, 12.5, 49.99, 50, 100, 1000, -3, 20],
    "brand": [7, 0],
    "tags": [50],
    "size": [500, 1000],
    "dims.w": [1, 2.5],
    "category": [1],
}
IMAGE_STRING_FIELDS = {"type", "taken", "path", "caption", "title", "description", "product"}
NUMERIC_ONLY = {"width", "height", "size"}


def _literal(rng: random.Random, field: str, op: str, number_on_text_fields: bool) -> str:
    numbers = NUMBER_VALUES.get(field, [])
    strings = STRING_VALUES.get(field, [])
    if field in NUMERIC_ONLY or (numbers and rng.random() < 0.5) or (
            number_on_text_fields and field in IMAGE_STRING_FIELDS and rng.random() < 0.2):
        value = rng.choice(numbers or [2021, 1, 0])
        return repr(value) if isinstance(value, float) else str(value)
    value = rng.choice(strings)
    if rng.random() < 0.3 and value.replace("_", "").isalpha():
        return value  # a bare word
    return json.dumps(value)


def _comparison(rng: random.Random, number_on_text_fields: bool) -> str:
    field = rng.choice(sorted(set(STRING_VALUES) | set(NUMBER_VALUES)))
    ops = ["=", "!=", "<", "<=", ">", ">="] + ([] if field in NUMERIC_ONLY else ["~", "~"])
    if rng.random() < 0.15:
        values = ", ".join(_literal(rng, field, "=", number_on_text_fields) for _ in range(rng.randint(1, 3)))
        return f"{field} {'not in' if rng.random() < 0.4 else 'in'} ({values})"
    op = rng.choice(ops)
    return f"{field} {op} {_literal(rng, field, op, number_on_text_fields)}"


def random_where(rng: random.Random, depth: int = 0, number_on_text_fields: bool = False) -> str:
    roll = rng.random()
    if depth >= 3 or roll < 0.45:
        return _comparison(rng, number_on_text_fields)
    if roll < 0.55:
        return f"not ({random_where(rng, depth + 1, number_on_text_fields)})"
    joiner = rng.choice([" and ", " or ", " AND ", " Or "])
    items = [random_where(rng, depth + 1, number_on_text_fields) for _ in range(rng.randint(2, 3))]
    return "(" + joiner.join(items) + ")" if rng.random() < 0.5 else joiner.join(f"({x})" for x in items)


def _engine(corpus: Corpus, name: str) -> SearchEngine:
    return SearchEngine.open(name, data_dir=corpus.data_dir)


def _ids_by_path(engine: SearchEngine) -> dict[str, int]:
    return {p: i for _, i, p in engine.store.hash_index(engine.collection.id)}


def _mismatches(engine: SearchEngine, corpus: Corpus, expressions: list[str]) -> list[str]:
    ids = _ids_by_path(engine)
    assert set(ids) == set(corpus.records)
    path_of = {i: p for p, i in ids.items()}
    bad = []
    for expr in expressions:
        node = parse_where(expr)
        got = {path_of[int(i)] for i in engine.store.filtered_ids(engine.collection.id, filter_condition(node))}
        want = {p for p, rec in corpus.records.items() if evaluate(node, rec)}
        if got != want:
            extra = sorted(os.path.basename(p) for p in got - want)
            missing = sorted(os.path.basename(p) for p in want - got)
            bad.append(f"{expr}\n    SQL only: {extra}\n    reference only: {missing}")
    return bad


# -- 1. filter correctness ---------------------------------------------------------------------


def test_corpus_records_match_what_the_store_keeps(corpus, monkeypatch):
    """The reference records are built independently; check a few against hits first."""
    use_color_model(monkeypatch)
    with _engine(corpus, "flat") as engine:
        assert engine.status().images == 81 and engine.status().products == 5
        hits = engine.search(text="red", k=100, group=False)
        assert sorted(h.path for h in hits) == sorted(corpus.records)
        for hit in hits:
            rec = corpus.records[hit.path]
            if len(rec.get("product", [])) > 1:
                continue  # a hit shows one product's attributes; filters see every product's
            attrs = {k: sorted(set(v)) for k, v in rec.items()
                     if k not in ("path", "type", "width", "height", "size", "taken", "caption", "title",
                                  "description", "product")}
            assert {k: sorted(set(v)) for k, v in hit.attributes.items()} == attrs, hit.path
            assert hit.taken_at == (rec.get("taken") or [None])[0]
            assert hit.caption == (rec.get("caption") or [None])[0]
            assert hit.title == (rec.get("title") or [None])[0]


@pytest.mark.parametrize("collection", ["flat", "hnsw"])
def test_random_filters_match_the_reference_semantics(corpus, collection):
    rng = random.Random(7 if collection == "flat" else 8)
    expressions = [random_where(rng) for _ in range(500)]
    with _engine(corpus, collection) as engine:
        bad = _mismatches(engine, corpus, expressions)
    assert not bad, f"{len(bad)} of {len(expressions)} filters differ from filters.evaluate:\n" + "\n".join(bad[:15])


def test_hand_picked_filters(corpus):
    cases = [
        'category = "shoes"', "category = SHOES", "category ~ sho", 'category = "hats"',  # " hats " is stripped
        "price = 50", 'price = "50"', "price = 10", "price < 10", "price >= 1000", "price ~ 5", "price != 50",
        'tags = "50%"', 'tags ~ "%"', 'tags ~ "_"', "tags ~ x_y", 'tags in ("red", sale)', "tags not in (red)",
        "brand = 7", 'brand = "7"', "brand ~ cme", "not brand = acme", "material = leather", 'title ~ "boot"',
        "product in (P1, p3)", "type = png", "type in (jpg, webp)", 'taken >= "2021-01-01"', 'taken < "2019"',
        'path ~ "shoes/sale"', "dims.w = 2.5", "dims.w = wide", "width > 24 and height <= 15",
        "caption ~ sidecar", "not (caption ~ a)", "`category` = bags",
    ]
    with _engine(corpus, "flat") as engine:
        bad = _mismatches(engine, corpus, cases)
    assert not bad, "\n".join(bad)


def test_number_literals_on_built_in_text_fields_are_read_as_text(corpus):
    """Documented: built-in text fields (taken, path, type, caption...) take a number in its text
    form, so ``taken >= 2021`` means what it says; attributes follow the reference semantics."""
    with _engine(corpus, "flat") as engine:
        cid = engine.collection.id
        for number, quoted in [("taken >= 2021", 'taken >= "2021"'), ("taken < 2030", 'taken < "2030"'),
                               ("caption < 5", 'caption < "5"')]:
            got = set(engine.store.filtered_ids(cid, filter_condition(parse_where(number))).tolist())
            assert got == set(engine.store.filtered_ids(cid, filter_condition(parse_where(quoted))).tolist()), number
        dated = set(engine.store.filtered_ids(cid, filter_condition(parse_where('taken >= "0"'))).tolist())
        assert set(engine.store.filtered_ids(cid, filter_condition(parse_where("taken >= 2021"))).tolist()) < dated


@pytest.mark.parametrize("collection", ["flat", "hnsw"])
def test_filtered_search_returns_the_true_top_k(corpus, collection, monkeypatch):
    """Never fewer than k hits when k images match, all matching, in score order, equal (as scores)
    to the brute-force top k by cosine; selective filters included."""
    use_color_model(monkeypatch)
    rng = random.Random(11)
    nprng = np.random.default_rng(11)
    expressions = [random_where(rng) for _ in range(70)] + [
        'path ~ "img07_"', "price = 120", "tags = winter", "type = webp and taken >= 2020-01-01", "product = p5",
        "category = shoes", "not category = shoes", "price > -100000"]
    problems = []
    with _engine(corpus, collection) as engine:
        cid = engine.collection.id
        ids, vecs = engine.store.all_vectors(cid)
        row_of = {int(i): n for n, i in enumerate(ids)}
        path_of = {i: p for p, i in _ids_by_path(engine).items()}
        for n, expr in enumerate(expressions):
            node = parse_where(expr)
            allowed = [i for i, p in path_of.items() if evaluate(node, corpus.records[p])]
            for k in (1, 3, 10, 40):
                if n % 2:
                    q = nprng.normal(size=vecs.shape[1]).astype(np.float32)
                    q /= np.linalg.norm(q)
                    hits = engine.search(vector=q, filters=expr, k=k, group=False)
                else:
                    colour = NAMES[n % len(NAMES)]
                    q = engine.encoder.encode_texts([colour])[0]
                    hits = engine.search(text=f"a {colour} thing", filters=expr, k=k, group=False)
                sims = {i: float(vecs[row_of[i]] @ q) for i in allowed}
                want = sorted(sims.values(), reverse=True)[:k]
                got = [h.score for h in hits]
                where = f"[{collection}] {expr!r} k={k}: "
                if len(hits) != min(k, len(allowed)):
                    problems.append(where + f"{len(hits)} hits, {min(k, len(allowed))} expected")
                elif any(h.id not in sims for h in hits):
                    problems.append(where + "a hit does not match the filter")
                elif len({h.id for h in hits}) != len(hits):
                    problems.append(where + "the same image twice")
                elif any(a < b - 1e-5 for a, b in zip(got, got[1:])):
                    problems.append(where + f"not in score order: {got}")
                elif not np.allclose(got, want, atol=1e-3) or any(abs(h.score - sims[h.id]) > 1e-3 for h in hits):
                    problems.append(where + f"scores {np.round(got, 3).tolist()} != top k {np.round(want, 3).tolist()}")
    assert not problems, f"{len(problems)} searches went wrong:\n" + "\n".join(problems[:15])


def test_filtered_keyword_and_grouped_search_counts(corpus, monkeypatch):
    """Keyword mode honours filters; group=True gives one hit per product (and every product hit matches)."""
    use_color_model(monkeypatch)
    with _engine(corpus, "flat") as engine:
        path_of = {i: p for p, i in _ids_by_path(engine).items()}
        for expr in ["category = shoes", "tags ~ e", "not price > 20", "product in (p1, p3, p5)"]:
            node = parse_where(expr)
            hits = engine.search(text="sunny beach city night forest red market sidecar", mode="keyword",
                                 filters=expr, k=80, group=False)
            assert hits and all(evaluate(node, corpus.records[h.path]) for h in hits), expr
            hits = engine.search(text="red", filters=expr, k=80, group=True)
            matching = [p for p in path_of.values() if evaluate(node, corpus.records[p])]
            groups = {g for p in matching for g in corpus.records[p].get("product", [p])}
            assert all(evaluate(node, corpus.records[h.path]) for h in hits), expr
            assert len({h.product_id or h.path for h in hits}) == len(hits) == len(groups), expr


# -- 2. folder / type / taken ------------------------------------------------------------------


@pytest.fixture
def small(tmp_path, monkeypatch):
    """Images in sibling folders whose names share a prefix, several types, some with dates."""
    spec = use_color_model(monkeypatch)
    root = tmp_path / "pics"
    save_image(root / "a" / "one.png", "red")
    save_image(root / "a" / "deep" / "two.jpg", "red", date="2021:05:01 10:00:00")
    save_image(root / "ab" / "three.jpg", "red", date="2020:12:31 23:59:59")  # "ab" starts like "a"
    save_image(root / "ab" / "four.jpeg", "blue", date="2023:02:03 04:05:06")
    save_image(root / "five.webp", "green", date="2021:01:01 00:00:00")
    save_image(root / "six.PNG", "red")
    index_folder(root, collection="small", model=spec)
    return root


def test_folder_filter(small, monkeypatch):
    with SearchEngine.open("small") as engine:
        def under(where):
            return sorted(names(engine.search(text="red", k=10, filters=where)))

        assert under(f'folder = "{small / "a"}"') == ["one.png", "two.jpg"]
        assert under(f'folder = "{small / "a"}/"') == ["one.png", "two.jpg"]  # a trailing slash is fine
        assert under(f'folder = "{small / "a" / "deep"}"') == ["two.jpg"]
        assert under(f'folder = "{small / "ab"}"') == ["four.jpeg", "three.jpg"]
        assert under(f'folder != "{small / "a"}"') == ["five.webp", "four.jpeg", "six.PNG", "three.jpg"]
        assert under(f'not folder = "{small}"') == []
        assert under(f'folder = "{small / "a"}" or folder = "{small / "ab"}"') == [
            "four.jpeg", "one.png", "three.jpg", "two.jpg"]
        monkeypatch.chdir(small)
        assert under("folder = ab") == ["four.jpeg", "three.jpg"]  # relative to the working directory
        with pytest.raises(QueryError):
            engine.search(text="red", filters=f'folder ~ "{small}"')


def test_type_and_taken_filters(small):
    with SearchEngine.open("small") as engine:
        def found(where, **kw):
            return sorted(names(engine.search(text="red", k=10, filters=where, **kw)))

        assert found("type = png") == ["one.png", "six.PNG"]
        assert found("type = PNG") == ["one.png", "six.PNG"]
        assert found("type = jpg") == ["four.jpeg", "three.jpg", "two.jpg"]  # .jpeg is stored as jpg
        assert found("type in (webp, png)") == ["five.webp", "one.png", "six.PNG"]
        assert found('taken >= "2021-01-01"') == ["five.webp", "four.jpeg", "two.jpg"]
        assert found('taken >= "2021-01-01" and taken < "2023"') == ["five.webp", "two.jpg"]
        assert found('taken < "2021-01-01"') == ["three.jpg"]
        assert found('taken ~ "2021-05"') == ["two.jpg"]
        assert found('not taken >= "2000"') == ["one.png", "six.PNG"]  # undated images
        assert found({"type": ["jpg"], "taken": ("2021-01-01", None)}) == ["four.jpeg", "two.jpg"]


def test_type_filter_accepts_jpeg_for_jpeg_files(small):
    """``.jpeg`` files are stored as type ``jpg``; asking for ``jpeg`` should find them too
    (the CLI help says ``--type jpg, png, heic``, but users name their files' extension)."""
    out = cli("search", "red", "-c", "small", "--type", "jpeg", "--json")
    assert out.exit_code == 0, out.output
    assert sorted(os.path.basename(h["path"]) for h in json.loads(out.stdout)) == ["four.jpeg", "three.jpg", "two.jpg"]


def test_non_ascii_values_compare_case_insensitively(tmp_path, monkeypatch):
    """filters.evaluate case-folds every string; image fields (caption, path) must too."""
    spec = use_color_model(monkeypatch)
    root = tmp_path / "Été"
    image = save_image(root / "Straße.png", "red")
    (root / "Straße.txt").write_text("ÉCOLE Straße", encoding="utf-8")
    (root / "Straße.json").write_text(json.dumps({"brand": "ÉCOLE"}), encoding="utf-8")
    index_folder(root, collection="accents", model=spec)
    catalog = tmp_path / "desserts.csv"
    catalog.write_text(f"id,images,title\nD1,{image},CRÈME BRÛLÉE\n", encoding="utf-8")
    import_catalog(catalog, collection="accents")
    with SearchEngine.open("accents") as engine:
        record = {"caption": ["ÉCOLE Straße"], "brand": ["ÉCOLE"], "path": [str(image)], "title": ["CRÈME BRÛLÉE"]}
        problems = []
        for where in ['brand = "école"', 'brand = "ÉCOLE"', 'caption ~ "école"', 'caption ~ "ÉCOLE"',
                      'caption ~ "strasse"', 'path ~ "été/"', 'path ~ "STRASSE"', 'title = "crème brûlée"',
                      'title ~ "CRÈME"']:
            got = len(engine.search(text="red", k=5, filters=where)) == 1
            if got != evaluate(parse_where(where), record):
                problems.append(f"{where}: search {'matches' if got else 'does not match'}, "
                                f"filters.evaluate says {not got}")
    assert not problems, "\n".join(problems)


def test_non_finite_number_strings_follow_the_reference(tmp_path, monkeypatch):
    """filters.evaluate reads "inf" as a number (float() does); the store keeps no number for it."""
    spec = use_color_model(monkeypatch)
    save_image(tmp_path / "inf" / "x.png", "red")
    (tmp_path / "inf" / "x.json").write_text(json.dumps({"price": "inf", "weight": "-Infinity"}), encoding="utf-8")
    index_folder(tmp_path / "inf", collection="inf", model=spec)
    record = {"price": ["inf"], "weight": ["-Infinity"]}
    with SearchEngine.open("inf") as engine:
        problems = [where for where in ["price > 5", "weight < 0", "not price <= 5", "price = inf"]
                    if (len(engine.search(text="red", filters=where)) == 1) != evaluate(parse_where(where), record)]
    assert not problems, f"search and filters.evaluate disagree on: {problems}"


def test_jpeg_dimensions_are_the_files_not_the_draft_decode(tmp_path, monkeypatch):
    """Hit.width/height and the width/height filters must be the image's size; JPEGs are decoded
    in draft mode (1/2..1/8 scale) for the model, which must not change the recorded size."""
    spec = use_color_model(monkeypatch)
    root = tmp_path / "dims"
    save_image(root / "big.jpg", "red", size=(400, 300))
    save_image(root / "big.png", "blue", size=(400, 300))
    index_folder(root, collection="dims", model=spec)
    with SearchEngine.open("dims") as engine:
        hits = engine.search(text="red", k=2)
        assert sorted((os.path.basename(h.path), h.width, h.height) for h in hits) == [
            ("big.jpg", 400, 300), ("big.png", 400, 300)]
        assert sorted(names(engine.search(text="red", filters="width = 400 and height = 300"))) == [
            "big.jpg", "big.png"]


@pytest.fixture
def two_products(tmp_path, monkeypatch):
    """One image with its own tag, in two products with a tag each."""
    spec = use_color_model(monkeypatch)
    image = save_image(tmp_path / "multi" / "x.png", "red")
    (tmp_path / "multi" / "x.json").write_text(json.dumps({"tags": ["own"]}), encoding="utf-8")
    save_image(tmp_path / "multi" / "y.png", "blue")
    catalog = tmp_path / "multi.csv"
    catalog.write_text(f"id,images,title,tags\nA,{image},Prod A,a-tag\nB,{image},Prod B,b-tag\n", encoding="utf-8")
    index_folder(tmp_path / "multi", collection="multi", model=spec)
    import_catalog(catalog, collection="multi")
    return image


def test_grouped_hits_of_a_shared_image_show_their_own_products_attributes(two_products):
    with SearchEngine.open("multi") as engine:
        hits = {h.product_id: h for h in engine.search(text="red", k=5) if h.path == str(two_products)}
        assert set(hits) == {"A", "B"}
        assert (hits["A"].title, hits["B"].title) == ("Prod A", "Prod B")
        problems = [f"{pid}: tags {sorted(hits[pid].attributes['tags'])}, expected {want}"
                    for pid, want in (("A", ["a-tag", "own"]), ("B", ["b-tag", "own"]))
                    if sorted(hits[pid].attributes["tags"]) != want]
        assert not problems, "; ".join(problems)
        hit = engine.search(text="red", k=1, group=False)[0]
        assert hit.path == str(two_products) and hit.attributes["tags"][0] == "own"


# -- 3. sidecars --------------------------------------------------------------------------------


def test_sidecar_captions_attributes_keywords_and_reindex(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    root = tmp_path / "side"
    bike = save_image(root / "sunset_beach-01.png", "red")
    (root / "sunset_beach-01.txt").write_text("A bicycle leaning on a wall\n", encoding="utf-8")
    (root / "sunset_beach-01.json").write_text(json.dumps({"caption": "ignored: the .txt comes first",
                                                           "tags": ["Vintage", "bike"], "price": 50.0}))
    boat = save_image(root / "harbour.png", "blue")
    (root / "harbour.json").write_text(json.dumps({"caption": "Fishing boats at dawn", "Brand": "Acme",
                                                   "rating": 4.5, "exif": {"Make": "Canon"}}))
    save_image(root / "plain.png", "green")
    first = index_folder(root, collection="side", model=spec)
    assert first.added == 3 and first.encoded == 3 and first.captions == 2

    with SearchEngine.open("side") as engine:
        by_name = {os.path.basename(h.path): h for h in engine.search(text="red", k=3)}
        assert by_name["sunset_beach-01.png"].caption == "A bicycle leaning on a wall"
        assert by_name["sunset_beach-01.png"].attributes == {"tags": ["Vintage", "bike"], "price": ["50"]}
        assert by_name["harbour.png"].caption == "Fishing boats at dawn"
        assert by_name["harbour.png"].attributes == {"brand": ["Acme"], "rating": ["4.5"], "exif.make": ["Canon"]}
        assert by_name["plain.png"].caption is None and by_name["plain.png"].attributes == {}
        assert names(engine.search(text="bicycle", mode="keyword")) == ["sunset_beach-01.png"]
        assert names(engine.search(text="boats", mode="keyword")) == ["harbour.png"]
        assert names(engine.search(text="sunset", mode="keyword")) == ["sunset_beach-01.png"]  # the file name
        assert names(engine.search(text="harbour", mode="keyword")) == ["harbour.png"]
        assert names(engine.search(text="vintage", mode="keyword")) == ["sunset_beach-01.png"]  # attributes
        assert names(engine.search(text="canon", mode="keyword")) == ["harbour.png"]
        assert engine.search(text="ignored", mode="keyword") == []
        assert names(engine.search(text="blue", filters="exif.make = canon and rating >= 4")) == ["harbour.png"]

    # edit only the sidecars: captions and attributes change, no image is encoded again
    bump(root / "sunset_beach-01.txt", "A purple tandem bicycle\n")
    bump(root / "harbour.json", json.dumps({"caption": "Sailing boats", "brand": "Zeta"}))
    again = index_folder(root, collection="side", model=spec)
    assert again.encoded == 0 and again.added == 0 and again.updated == 0, again.to_dict()
    assert again.captions == 2
    with SearchEngine.open("side") as engine:
        by_name = {os.path.basename(h.path): h for h in engine.search(text="red", k=3)}
        assert by_name["sunset_beach-01.png"].caption == "A purple tandem bicycle"
        assert by_name["harbour.png"].caption == "Sailing boats"
        assert by_name["harbour.png"].attributes == {"brand": ["Zeta"]}
        assert engine.search(text="fishing", mode="keyword") == []
        assert names(engine.search(text="tandem", mode="keyword")) == ["sunset_beach-01.png"]
        assert engine.search(text="blue", filters="brand = acme") == []
        assert names(engine.search(text="blue", filters="brand = zeta")) == ["harbour.png"]
        # image -> text: the colour model embeds the caption "A purple tandem bicycle" as purple
        texts = engine.search_texts(image=save_image(tmp_path / "query.png", "purple"), k=1)
        assert [(t.text, t.field, t.path) for t in texts] == [("A purple tandem bicycle", "caption", str(bike))]
        texts = engine.search_texts(text="sailing boats", k=5)
        assert texts[0].path == str(boat) and texts[0].text == "Sailing boats"
        assert {t.text for t in texts} == {"A purple tandem bicycle", "Sailing boats"}  # old captions are gone

    # removing a sidecar removes its caption
    (root / "harbour.json").unlink()
    third = index_folder(root, collection="side", model=spec)
    assert third.encoded == 0
    with SearchEngine.open("side") as engine:
        hit = next(h for h in engine.search(text="blue", k=3) if h.path == str(boat))
        assert hit.caption is None and hit.attributes == {}
        assert engine.search(text="sailing", mode="keyword") == []
        assert [t.text for t in engine.search_texts(text="blue", k=5)] == ["A purple tandem bicycle"]


# -- 4. hybrid --------------------------------------------------------------------------------------


def test_hybrid_ranks_images_matching_both_ways_first(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    root = tmp_path / "hyb"
    for i in range(6):  # vector matches without the word
        save_image(root / f"v{i}.png", "red", size=(20 + i, 16))
    save_image(root / "both.png", "red", size=(30, 30))
    (root / "both.txt").write_text("red kite", encoding="utf-8")
    for i in range(3):  # the word without the colour
        save_image(root / f"k{i}.png", "blue", size=(20 + i, 16))
        (root / f"k{i}.txt").write_text("a red kite drawn in blue ink" + " and pencil" * i, encoding="utf-8")
    for i in range(10):
        save_image(root / f"other{i}.png", NAMES[2 + i % 6], size=(20 + i, 16))
    index_folder(root, collection="hyb", model=spec)
    with SearchEngine.open("hyb") as engine:
        vector = names(engine.search(text="red kite", k=4, group=False))
        keyword = names(engine.search(text="red kite", k=4, mode="keyword", group=False))
        assert set(vector) <= {"both.png"} | {f"v{i}.png" for i in range(6)}
        assert set(keyword) == {"both.png", "k0.png", "k1.png", "k2.png"}
        hybrid = engine.search(text="red kite", k=10, mode="hybrid", group=False)
        assert names(hybrid)[0] == "both.png"
        assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)
        assert {"k0.png", "v0.png"} <= set(names(hybrid))
        # the weights' ends give the single rankings back (within their own ties)
        only_vector = engine.search(text="red kite", k=7, mode="hybrid", keyword_weight=0.0, group=False)
        assert set(names(only_vector)) == {"both.png"} | {f"v{i}.png" for i in range(6)}
        only_keyword = engine.search(text="red kite", k=4, mode="hybrid", keyword_weight=1.0, group=False)
        assert set(names(only_keyword)) == set(keyword)
        # hybrid with a filter: only matching images, and still k of them
        hits = engine.search(text="red kite", k=5, mode="hybrid", filters='path ~ "hyb/k" or path ~ "hyb/other"')
        assert len(hits) == 5 and all(n.startswith(("k", "other")) for n in names(hits))
        assert set(names(hits)[:3]) == {"k0.png", "k1.png", "k2.png"}
        with pytest.raises(QueryError):
            engine.search(text="red", mode="hybrid", keyword_weight=1.5)
        with pytest.raises(QueryError):
            engine.search(vector=np.eye(len(NAMES) + 1, dtype=np.float32)[0], mode="hybrid")  # no words


# -- 5. sort by date, min_score ----------------------------------------------------------------


def test_sort_by_date_and_min_score(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    root = tmp_path / "dates"
    dated = {}
    for i in range(20):
        year = 2000 + i
        path = save_image(root / f"red{i:02d}.jpg", "red", size=(20 + i, 16),
                          date=None if i % 5 == 0 else f"{year}:06:01 12:00:00")
        dated[path.name] = None if i % 5 == 0 else f"{year}-06-01T12:00:00"
    save_image(root / "blue-new.jpg", "blue", date="2030:01:01 00:00:00")  # newest, but not relevant
    for i in range(10):
        save_image(root / f"green{i}.jpg", "green", size=(20 + i, 18), date=f"2025:01:0{1 + i % 9} 00:00:00")
    index_folder(root, collection="dates", model=spec)
    with SearchEngine.open("dates") as engine:
        # every red image is above the cut-off: the 5 newest of all of them, newest first
        hits = engine.search(text="red", k=5, sort="date", min_score=0.5)
        assert names(hits) == ["red19.jpg", "red18.jpg", "red17.jpg", "red16.jpg", "red14.jpg"]
        assert [h.taken_at for h in hits] == [dated[n] for n in names(hits)]
        hits = engine.search(text="red", k=30, sort="date", min_score=0.5)
        assert len(hits) == 20
        expected = sorted((n for n in dated if dated[n]), key=lambda n: dated[n], reverse=True)
        assert names(hits)[:16] == expected
        assert sorted(names(hits)[16:]) == ["red00.jpg", "red05.jpg", "red10.jpg", "red15.jpg"]  # undated last
        # without min_score: the top k by score, then newest first
        top = engine.search(text="red", k=8)
        hits = engine.search(text="red", k=8, sort="date")
        assert set(names(hits)) == set(names(top))
        taken = [h.taken_at for h in hits]
        dated_part = [t for t in taken if t]
        assert taken[: len(dated_part)] == sorted(dated_part, reverse=True) and all(taken[: len(dated_part)])
        # a cut-off that leaves fewer than k
        assert len(engine.search(text="red", k=50, min_score=0.5)) == 20
        assert all(h.score >= 0.5 for h in engine.search(text="red", k=50, min_score=0.5))
        assert engine.search(text="red", k=5, min_score=1.5) == []
        # sort by date with a filter and min_score
        hits = engine.search(text="green", k=3, sort="date", min_score=0.5, filters='taken >= "2025-01-05"')
        assert [h.taken_at for h in hits] == ["2025-01-09T00:00:00", "2025-01-08T00:00:00", "2025-01-07T00:00:00"]
        with pytest.raises(QueryError):
            engine.search(text="red", sort="newest")


# -- 6. dedup -------------------------------------------------------------------------------------


def test_dedup_collapses_near_duplicates_and_keeps_k(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    root = tmp_path / "dups"
    for colour in NAMES:
        for j in range(6):  # six near-identical images of each colour (different sizes: different files)
            save_image(root / colour / f"{colour}{j}.png", colour, size=(20 + j, 16 + j))
    index_folder(root, collection="dups", model=spec)
    with SearchEngine.open("dups") as engine:
        plain = engine.search(text="red", k=6)
        assert [n.startswith("red") for n in names(plain)] == [True] * 6
        for dedup in (0.95, True):
            hits = engine.search(text="red", k=5, dedup=dedup)
            assert len(hits) == 5 and len(set(folders(hits))) == 5, names(hits)
            assert folders(hits)[0] == "red"
        hits = engine.search(text="red", k=20, dedup=0.95)
        assert sorted(folders(hits)) == sorted(NAMES)  # one per colour: all that is left
        hits = engine.search(text="red", k=4, dedup=0.95, filters='not path ~ "/red/"')
        assert len(hits) == 4 and len(set(folders(hits))) == 4 and "red" not in folders(hits)
        hits = engine.search(text="red", k=4, dedup=0.95, mode="hybrid")  # hybrid scores, cosine dedup
        assert len(hits) == 4 and len(set(folders(hits))) == 4
        assert len(engine.search(text="red", k=3, dedup=1.0)) == 3
        with pytest.raises(QueryError):
            engine.search(text="red", dedup=1.5)
    out = cli("search", "red", "-c", "dups", "--dedup", "-k", "3", "--json")
    assert out.exit_code == 0, out.output
    assert len({os.path.basename(os.path.dirname(h["path"])) for h in json.loads(out.stdout)}) == 3


# -- 7. query composition -------------------------------------------------------------------------


def test_composed_queries(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    root = tmp_path / "comp"
    for colour in ("red", "blue", "green"):
        for j in range(3):
            save_image(root / f"{colour}{j}.png", colour, size=(20 + j, 16))
    index_folder(root, collection="comp", model=spec)
    green = root / "green0.png"
    with SearchEngine.open("comp") as engine:
        hits = engine.search(query='"red" - "blue"', k=9)
        assert [n[:-5] for n in names(hits)[:3]] == ["red"] * 3
        assert [n[:-5] for n in names(hits)[-3:]] == ["blue"] * 3
        assert hits[0].score == pytest.approx(2 ** -0.5, abs=1e-3)
        assert hits[-1].score == pytest.approx(-(2 ** -0.5), abs=1e-3)
        hits = engine.search(query=f'"red" + 0.5:{green}', k=9)
        assert [n[:-5] for n in names(hits)[:6]] == ["red"] * 3 + ["green"] * 3
        assert hits[0].score == pytest.approx(1 / 1.25 ** 0.5, abs=1e-3)
        assert hits[3].score == pytest.approx(0.5 / 1.25 ** 0.5, abs=1e-3)
        hits = engine.search(query=f'"red" + 2:@"{green}"', k=3)  # the image weighs more now
        assert [n[:-5] for n in names(hits)] == ["green"] * 3
        vec = engine.embed_query('"blue" + "green" - 0.5:red')
        assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
        # keyword mode uses the positive text parts
        assert engine.search(query='"red" - "blue"', mode="keyword") == []
        for bad in ['"red" -', '- "red"', '"red" "blue"', '"unterminated', '0:red', '2: red', '"red" + - "blue"',
                    '""', "   ", '"red" - "red"', f'"red" + @{tmp_path / "missing.png"}', "@"]:
            with pytest.raises(QueryError):
                engine.search(query=bad, k=3)
        with pytest.raises(QueryError):
            engine.search(query='"red"', text="red")
    out = cli("search", '"red" - "blue"', "-c", "comp", "--json", "-k", "9")
    assert out.exit_code == 0, out.output
    got = [os.path.basename(h["path"])[:-5] for h in json.loads(out.stdout)]
    assert got[:3] == ["red"] * 3 and got[-3:] == ["blue"] * 3
    out = cli("search", f'"red" + 0.5:{green}', "-c", "comp", "--json", "-k", "6")
    assert out.exit_code == 0, out.output
    assert [os.path.basename(h["path"])[:-5] for h in json.loads(out.stdout)] == ["red"] * 3 + ["green"] * 3
    out = cli("search", '"red" "blue"', "-c", "comp")
    assert out.exit_code == 6 and "column" in out.output
    out = cli("search", '"red" - "blue"', "-c", "comp", "--to", "text")
    assert out.exit_code == 6


# -- 8. OCR ------------------------------------------------------------------------------------------


def _sign(path: Path, word: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (640, 200), (240, 238, 228))
    font = ImageFont.load_default(size=72)
    assert isinstance(font, ImageFont.FreeTypeFont)
    ImageDraw.Draw(image).text((40, 50), word, font=font, fill=(20, 20, 20))
    image.save(path)
    return path


def test_ocr_text_is_indexed_kept_and_added_later(tmp_path, monkeypatch):
    pytest.importorskip("rapidocr_onnxruntime")
    spec = use_color_model(monkeypatch)
    root = tmp_path / "signs"
    sign = _sign(root / "shopfront.png", "BAKERY")
    save_image(root / "plain.png", "red")
    report = index_folder(root, collection="ocr", model=spec, ocr=True)
    assert report.added == 2

    def check(collection: str) -> None:
        with SearchEngine.open(collection) as engine:
            hit = next(h for h in engine.search(text="white", k=2) if h.path == str(sign))
            assert hit.text is not None and "BAKERY" in hit.text.upper()
            assert names(engine.search(text="bakery", mode="keyword")) == ["shopfront.png"]
            assert names(engine.search(text="bakery", filters="text ~ bakery")) == ["shopfront.png"]

    check("ocr")
    again = index_folder(root, collection="ocr", model=spec)  # OCR stays on: nothing to read again
    assert again.unchanged == 2 and again.encoded == 0
    check("ocr")
    off = index_folder(root, collection="ocr", model=spec, ocr=False)  # off: the text read so far stays
    assert off.unchanged == 2
    check("ocr")
    os.utime(sign, (time.time() + 10, time.time() + 10))  # touched: still the same content and text
    index_folder(root, collection="ocr", model=spec)
    check("ocr")

    # indexed without OCR first: turning it on reads the text of the images already there
    first = index_folder(root, collection="late", model=spec)
    assert first.added == 2
    with SearchEngine.open("late") as engine:
        assert all(h.text is None for h in engine.search(text="red", k=2))
        assert engine.search(text="bakery", mode="keyword") == []
    late = index_folder(root, collection="late", model=spec, ocr=True)
    assert late.encoded == 0 and late.added == 0
    check("late")


# -- 9. CLI ------------------------------------------------------------------------------------------


@pytest.fixture
def shop(tmp_path, monkeypatch):
    spec = use_color_model(monkeypatch)
    root = tmp_path / "shop"
    items = [  # name, colour, folder, date, attributes
        ("r1.jpg", "red", "shoes", "2019:01:01 00:00:00", {"category": "shoes", "price": 10, "tags": ["sale"]}),
        ("r2.jpg", "red", "shoes", "2022:01:01 00:00:00", {"category": "shoes", "price": 60}),
        ("r3.png", "red", "bags", None, {"category": "bags", "price": 25}),
        ("r4.png", "red", "bags/sub", "2021:01:01 00:00:00", {"category": "Bags", "price": 50.0}),
        ("b1.jpg", "blue", "shoes", "2020:01:01 00:00:00", {"category": "shoes", "price": 30}),
        ("g1.png", "green", "misc", None, {"caption": "a green rainbow umbrella"}),
    ]
    for i, (name, colour, folder, date, attrs) in enumerate(items):
        path = save_image(root / folder / name, colour, size=(20 + i, 16), date=date)
        path.with_suffix(".json").write_text(json.dumps(attrs), encoding="utf-8")
    copy = root / "copies" / "r2-copy.jpg"  # an exact copy of r2: a near duplicate
    copy.parent.mkdir(parents=True)
    copy.write_bytes((root / "shoes" / "r2.jpg").read_bytes())
    catalog = root.parent / "products.csv"
    catalog.write_text(f"id,images,title,brand\nSKU1,{root / 'bags' / 'r3.png'}|{root / 'bags' / 'sub' / 'r4.png'},"
                       "Red Bag,Acme\n", encoding="utf-8")
    index_folder(root, collection="shop", model=spec)
    import_catalog(catalog, collection="shop")
    return root


def _json_names(*args: str) -> list[str]:
    out = cli("search", *args, "-c", "shop", "--json")
    assert out.exit_code == 0, out.output
    return [os.path.basename(h["path"]) for h in json.loads(out.stdout)]


def test_cli_filters_modes_and_options(shop):
    assert sorted(_json_names("red", "--where", 'category = "shoes" and price < 50')) == ["b1.jpg", "r1.jpg"]
    assert sorted(_json_names("red", "--filter", "price=10..50", "--images")) == ["b1.jpg", "r1.jpg", "r3.png",
                                                                                   "r4.png"]
    assert sorted(_json_names("red", "--filter", "price=..25", "--filter", "category=shoes")) == ["r1.jpg"]
    assert sorted(_json_names("red", "--filter", "price>=50", "--images")) == ["r2.jpg", "r4.png"]
    assert sorted(_json_names("red", "--under", str(shop / "bags"), "--images")) == ["r3.png", "r4.png"]
    assert sorted(_json_names("red", "--under", str(shop / "bags" / "sub"), "--under", str(shop / "misc"))) == [
        "g1.png", "r4.png"]
    assert sorted(_json_names("red", "--type", "png", "--images")) == ["g1.png", "r3.png", "r4.png"]
    assert sorted(_json_names("red", "--type", ".JPG", "--type", "png", "-k", "20", "--images")) == sorted(
        ["r1.jpg", "r2.jpg", "r2-copy.jpg", "b1.jpg", "g1.png", "r3.png", "r4.png"])
    assert _json_names("umbrella", "--mode", "keyword") == ["g1.png"]
    assert _json_names("rainbow", "--mode", "hybrid")[0] == "g1.png"
    assert _json_names("acme", "--mode", "keyword", "--images") in (["r3.png", "r4.png"], ["r4.png", "r3.png"])
    # one hit per product without --images, with its product id
    out = cli("search", "red", "-c", "shop", "--json", "--where", "brand = acme")
    hits = json.loads(out.stdout)
    assert out.exit_code == 0 and len(hits) == 1 and hits[0]["product_id"] == "SKU1" and hits[0]["title"] == "Red Bag"
    assert sorted(hits[0]["images"]) == sorted([str(shop / "bags" / "r3.png"), str(shop / "bags" / "sub" / "r4.png")])
    # newest first among the relevant ones, undated last
    by_date = _json_names("red", "--sort", "date", "--min-score", "0.5", "--images")
    assert sorted(by_date[:2]) == ["r2-copy.jpg", "r2.jpg"] and by_date[2:] == ["r4.png", "r1.jpg", "r3.png"]
    deduped = _json_names("red", "--dedup", "--images", "-k", "3")  # five red images collapse into one
    assert len(deduped) == 3 and sum(n.startswith("r") for n in deduped) == 1
    assert {"b1.jpg", "g1.png"} <= set(deduped)
    out = cli("search", "red", "-c", "shop", "--sort", "date", "--min-score", "0.5", "--images")
    assert out.exit_code == 0 and "2022-01-01T00:00:00" in out.stdout


def test_cli_to_text_and_errors(shop):
    out = cli("search", str(shop / "misc" / "g1.png"), "-c", "shop", "--to", "text", "--json")
    assert out.exit_code == 0, out.output
    texts = json.loads(out.stdout)
    assert texts[0]["text"] == "a green rainbow umbrella" and texts[0]["path"] == str(shop / "misc" / "g1.png")
    assert texts[0]["field"] == "caption" and texts[0]["score"] == pytest.approx(1.0, abs=1e-3)
    out = cli("search", "a red thing", "-c", "shop", "--to", "text", "--json", "-k", "1")
    assert out.exit_code == 0, out.output
    assert [(t["text"], t["field"], t["product_id"]) for t in json.loads(out.stdout)] == [("Red Bag", "title", "SKU1")]
    out = cli("search", "red", "-c", "shop", "--where", "price <")
    assert out.exit_code == 6 and "column 8" in out.output, out.output
    out = cli("search", "red", "-c", "shop", "--where", "(price < 5")
    assert out.exit_code == 6 and "column 11" in out.output, out.output
    out = cli("search", "red", "-c", "shop", "--where", "price ? 5")
    assert out.exit_code == 6 and "column 7" in out.output, out.output
    out = cli("search", "red", "-c", "shop", "--filter", "price")
    assert out.exit_code == 6
    out = cli("search", "red", "-c", "shop", "--mode", "fuzzy")
    assert out.exit_code == 6
    out = cli("search", "red", "-c", "shop", "--to", "sound")
    assert out.exit_code == 6
    out = cli("search", "red", "-c", "shop", "--where", "width ~ 3")
    assert out.exit_code == 6
