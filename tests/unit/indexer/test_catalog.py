from __future__ import annotations

import json
import sys

import pytest

from indexer.catalog import CatalogColumns, CatalogRow, is_url, read_catalog
from searchengine.errors import CatalogError, ConfigError


def write(path, text: str, encoding: str = "utf-8"):
    path.write_text(text, encoding=encoding)
    return path


def jsonl(path, *lines):
    return write(path, "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")


def by_id(catalog) -> dict[str, CatalogRow]:
    return {r.product_id: r for r in catalog.rows}


def errors(catalog) -> list[tuple[int, str | None, str]]:
    return [(e.line, e.product_id, e.error) for e in catalog.errors]


# --- formats and columns ---------------------------------------------------------------------------------------

def test_csv_auto_detects_columns_and_reads_values(tmp_path):
    (tmp_path / "shop").mkdir()
    path = write(tmp_path / "shop" / "catalog.csv",
                 "product_id,image_url,name,description,caption,category,brand,price,tags,empty\n"
                 "p1,img/a.jpg,Red shoe,A comfy shoe,a red shoe on white,shoes,Acme,12.5,running| sale |,\n"
                 "p2,https://cdn.example.com/b.png?x=1,,,,bags,,,,\n")
    catalog = read_catalog(path)
    cols = catalog.columns
    assert (cols.id, cols.images, cols.title, cols.description, cols.caption) == (
        "product_id", ("image_url",), "name", "description", "caption")
    assert cols.attributes == ("category", "brand", "price", "tags", "empty")
    assert catalog.format == "csv" and catalog.path == str(path) and catalog.errors == []
    p1, p2 = by_id(catalog)["p1"], by_id(catalog)["p2"]
    assert p1.line == 2 and p2.line == 3
    assert p1.images == (str(tmp_path / "shop" / "img" / "a.jpg"),)
    assert (p1.title, p1.description, p1.caption) == ("Red shoe", "A comfy shoe", "a red shoe on white")
    assert p1.attributes == {"category": ("shoes",), "brand": ("Acme",), "price": ("12.5",),
                             "tags": ("running", "sale")}
    assert p2.images == ("https://cdn.example.com/b.png?x=1",)
    assert (p2.title, p2.description, p2.caption) == (None, None, None)
    assert p2.attributes == {"category": ("bags",)}


def test_multi_image_cells_relative_home_and_file_urls(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path / "c.csv", "id,images\n"
                 "a, x.jpg | ../up/y.png || https://h.example/z.webp | ~/pics/w.jpg|/abs/v.jpg|x.jpg\n"
                 "b,file:///srv/pics/one%20two.jpg\n")
    rows = by_id(read_catalog(path))
    assert rows["a"].images == (str(tmp_path / "x.jpg"), str(tmp_path.parent / "up" / "y.png"),
                                "https://h.example/z.webp", str(tmp_path / "home" / "pics" / "w.jpg"), "/abs/v.jpg")
    assert rows["b"].images == ("/srv/pics/one two.jpg",)


def test_quoted_newlines_keep_record_start_line_numbers(tmp_path):
    path = write(tmp_path / "c.csv", 'id,image,description\n'
                 'a,a.jpg,"line one\nline two\nline three"\n'  # 2-4
                 '\n'                                           # 5
                 'b,,"no image\nhere"\n'                        # 6-7
                 'c,c.jpg,plain\n'                               # 8
                 ',d.jpg,"missing\nid"\n'                       # 9-10
                 'e,e.jpg,"x"\n')                               # 11
    catalog = read_catalog(path)
    assert [(r.product_id, r.line) for r in catalog.rows] == [("a", 2), ("c", 8), ("e", 11)]
    assert by_id(catalog)["a"].description == "line one\nline two\nline three"
    assert errors(catalog) == [(6, "b", "no images"), (9, None, "missing product id")]
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(b'id,image,description\r\na,a.jpg,"one\r\ntwo"\r\nb,b.jpg,x\r\n')
    assert [(r.product_id, r.line, r.description) for r in read_catalog(crlf).rows] == [
        ("a", 2, "one\r\ntwo"), ("b", 4, "x")]


def test_csv_with_bom_tsv_and_custom_list_separator(tmp_path):
    bom = write(tmp_path / "bom.csv", "\ufeffsku,img,keywords\nk1,a.jpg,x;y\n", encoding="utf-8")
    catalog = read_catalog(bom, CatalogColumns(list_separator=";"))
    assert catalog.columns.id == "sku" and by_id(catalog)["k1"].attributes == {"keywords": ("x", "y")}
    tsv = write(tmp_path / "c.tsv", "ID\tImage_Path\tTitle\tcolor\n1\ta.jpg|b.jpg\tT, with comma\tred\n")
    row = read_catalog(tsv).rows[0]
    assert (row.product_id, row.title, row.attributes) == ("1", "T, with comma", {"color": ("red",)})
    assert row.images == (str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"))


def test_jsonl_values_nesting_and_line_numbers(tmp_path):
    path = jsonl(tmp_path / "c.jsonl",
                 {"id": 7, "images": ["a.jpg", "https://x.example/b.jpg"], "title": "T", "price": 12,
                  "rating": 4.5, "in_stock": True, "tags": ["x", "y", "x", None, ""], "nan": None,
                  "dims": {"w": 10, "h": {"v": 2}, "unit": "cm"}, "sizes": [{"eu": 40}]},
                 "",
                 "{not json",
                 "[1, 2]",
                 {"id": "8", "image": "c.jpg|d.jpg", "text": "a caption"})
    catalog = read_catalog(path)
    assert catalog.columns.images == ("images",)  # the first present candidate wins
    assert errors(catalog)[0][:2] == (3, None) and errors(catalog)[0][2].startswith("invalid JSON")
    assert errors(catalog)[1] == (4, None, "a JSON list, not an object")
    assert errors(catalog)[2] == (5, "8", "no images")  # "image" is not the image column here
    row = catalog.rows[0]
    assert (row.line, row.product_id, row.title) == (1, "7", "T")
    assert row.images == (str(tmp_path / "a.jpg"), "https://x.example/b.jpg")
    assert row.attributes == {"price": (12.0,), "rating": (4.5,), "in_stock": ("true",), "tags": ("x", "y"),
                              "dims.w": (10.0,), "dims.h": ('{"v": 2}',), "dims.unit": ("cm",),
                              "sizes": ('{"eu": 40}',)}


def test_json_array_and_jsonl_content_in_a_json_file(tmp_path):
    path = write(tmp_path / "c.json", json.dumps([{"item_id": 1.0, "image_urls": ["a.jpg"], "color": "red"},
                                                  "nope", {"item_id": 2, "image_urls": "b.jpg"}]))
    catalog = read_catalog(path)
    assert [(r.line, r.product_id) for r in catalog.rows] == [(1, "1"), (3, "2")]
    assert errors(catalog) == [(2, None, "item 2 is a JSON str, not an object")]
    lines = jsonl(tmp_path / "lines.json", {"id": "a", "url": "https://x.example/a"}, {"id": "b", "url": "b.png"})
    assert [r.product_id for r in read_catalog(lines).rows] == ["a", "b"]
    with pytest.raises(CatalogError, match="expected a JSON array"):
        read_catalog(write(tmp_path / "obj.json", '{"id": 1}'))
    with pytest.raises(CatalogError, match="invalid JSON at line 1"):
        read_catalog(write(tmp_path / "bad.json", '[{"id": 1,'))


def test_parquet_lists_numbers_nulls_and_row_numbers(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({
        "product_id": pa.array([1, 2, 3, 4], pa.int64()),
        "images": pa.array([["a.jpg", "b.jpg"], [], ["https://x.example/c.jpg"], None], pa.list_(pa.string())),
        "title": ["one", None, "three", "four"],
        "price": [9.99, 1.0, None, 2.0],
        "brand": pa.array([{"name": "Acme", "country": "FR"}, None, None, None],
                          pa.struct([("name", pa.string()), ("country", pa.string())])),
        "__index_level_0__": [0, 1, 2, 3],
    })
    path = tmp_path / "c.parquet"
    pq.write_table(table, path, row_group_size=2)
    catalog = read_catalog(path)
    assert catalog.columns.attributes == ("price", "brand")
    assert [(r.line, r.product_id) for r in catalog.rows] == [(1, "1"), (3, "3")]
    assert errors(catalog) == [(2, "2", "no images"), (4, "4", "no images")]
    first, third = catalog.rows
    assert first.images == (str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"))
    assert first.attributes == {"price": (9.99,), "brand.name": ("Acme",), "brand.country": ("FR",)}
    assert third.attributes == {} and third.title == "three"


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(CatalogError, match=r"pip install 'searchengine\[parquet\]'"):
        read_catalog(write(tmp_path / "c.parquet", "x"))


def test_bad_parquet_file_is_a_catalog_error(tmp_path):
    pytest.importorskip("pyarrow.parquet")
    with pytest.raises(CatalogError, match="as Parquet"):
        read_catalog(write(tmp_path / "c.parquet", "not parquet at all"))


def test_explicit_columns(tmp_path):
    path = write(tmp_path / "c.csv", "code,front,back,label,notes,color,size,id\n"
                 "X1,f.jpg,b.jpg,Label,Some notes,blue,M,ignored\n"
                 "X2,,b2.jpg,,,,,\n")
    columns = CatalogColumns(id="code", images=("front", "back"), title="label", description="notes",
                             attributes=("color", "SIZE"))
    catalog = read_catalog(path, columns)
    assert catalog.columns.attributes == ("color", "size")  # matched case-insensitively
    x1, x2 = catalog.rows
    assert x1.images == (str(tmp_path / "f.jpg"), str(tmp_path / "b.jpg"))
    assert (x1.title, x1.description, x1.attributes) == ("Label", "Some notes", {"color": ("blue",), "size": ("M",)})
    assert x2.images == (str(tmp_path / "b2.jpg"),)
    assert read_catalog(path, CatalogColumns(id="code", images="front", attributes=())).rows[0].attributes == {}


def test_missing_named_column_lists_the_available_ones(tmp_path):
    path = write(tmp_path / "c.csv", "id,image,color\n1,a.jpg,red\n")
    with pytest.raises(CatalogError, match=r"no column 'colour' \(--attribute-column\); its columns: id, image, color"):
        read_catalog(path, CatalogColumns(attributes=("colour",)))
    with pytest.raises(CatalogError, match="--image-column"):
        read_catalog(path, CatalogColumns(images=("photo",)))
    lines = jsonl(tmp_path / "c.jsonl", {"id": 1, "image": "a.jpg"}, {"id": 2, "image": "b.jpg", "brand": "B"})
    with pytest.raises(CatalogError, match="no column 'title'.*id, image, brand"):
        read_catalog(lines, CatalogColumns(title="title"))


def test_no_id_or_image_column_says_which_option_to_pass(tmp_path):
    with pytest.raises(CatalogError, match="no product id column.*--id-column.*code, picture"):
        read_catalog(write(tmp_path / "a.csv", "code,picture\n1,a.jpg\n"))
    with pytest.raises(CatalogError, match="no image column.*--image-column"):
        read_catalog(write(tmp_path / "b.csv", "id,picture\n1,a.jpg\n"))


def test_format_errors_missing_files_and_overrides(tmp_path):
    with pytest.raises(CatalogError, match=r"supported: \.csv, \.tsv, \.jsonl, \.ndjson, \.json, \.parquet"):
        read_catalog(write(tmp_path / "c.xlsx", "x"))
    with pytest.raises(CatalogError, match="unknown catalog format 'xml'"):
        read_catalog(write(tmp_path / "c.csv", "x"), format="xml")
    with pytest.raises(CatalogError, match="no such catalog file"):
        read_catalog(tmp_path / "missing.csv")
    with pytest.raises(CatalogError, match="is empty"):
        read_catalog(write(tmp_path / "empty.csv", ""))
    with pytest.raises(CatalogError, match="not UTF-8"):
        read_catalog(write(tmp_path / "latin.csv", "id,image,title\n1,a.jpg,caf\xe9\n", encoding="latin-1"))
    assert isinstance(CatalogError("x"), ConfigError)
    txt = write(tmp_path / "c.txt", '{"id": 1, "image": "a.jpg"}\n')
    assert read_catalog(txt, format="ndjson").rows[0].product_id == "1"
    assert read_catalog(write(tmp_path / "h.csv", "id,image\n")).rows == []


# --- per-row errors -------------------------------------------------------------------------------------------

def test_every_row_error_kind_with_line_numbers_while_good_rows_import(tmp_path):
    path = write(tmp_path / "c.csv",
                 "id,image,title\n"
                 "ok1,a.jpg,first\n"           # 2
                 ",b.jpg,no id\n"              # 3
                 "ok2,c.jpg,\n"                # 4
                 "ok1,d.jpg,again\n"           # 5
                 "e1,,no image\n"              # 6
                 "e2,ftp://h.example/a.jpg,\n"  # 7
                 "e3,data:image/png;base64,iVBOR\n"  # 8: the comma splits it; the ref is still refused
                 "e4,a.jpg,too,many,fields\n"  # 9
                 "e5,http://,empty host\n"     # 10
                 "ok3,\"x.jpg|https://h.example/y.jpg\",last\n")  # 11
    catalog = read_catalog(path)
    assert [(r.line, r.product_id) for r in catalog.rows] == [(2, "ok1"), (4, "ok2"), (11, "ok3")]
    assert errors(catalog) == [
        (3, None, "missing product id"),
        (5, "ok1", "duplicate product id 'ok1' (first on line 2)"),
        (6, "e1", "no images"),
        (7, "e2", "unsupported image reference 'ftp://h.example/a.jpg': expected an http(s) URL or a file path"),
        (8, "e3", "unsupported image reference 'data:image/png;base64': expected an http(s) URL or a file path"),
        (9, None, "5 fields but the header has 3"),
        (10, "e5", "unsupported image reference 'http://': expected an http(s) URL or a file path"),
    ]


def test_jsonl_row_errors(tmp_path):
    path = jsonl(tmp_path / "c.jsonl",
                 {"id": "a", "images": ["x.jpg"]},
                 {"id": "   ", "images": ["x.jpg"]},
                 {"id": ["a"], "images": ["x.jpg"]},
                 {"id": "b", "images": [1, 2]},
                 {"id": "c", "images": {"url": "x.jpg"}},
                 {"id": "d", "images": ["data:image/png;base64," + "A" * 200]},
                 {"id": "a", "images": []},
                 {"id": "e", "images": [None, " ", "ok.jpg"]})
    catalog = read_catalog(path)
    assert [r.product_id for r in catalog.rows] == ["a", "e"]
    got = errors(catalog)
    assert got[:5] == [(2, None, "missing product id"),
                       (3, None, 'the product id must be a string or a number, not ["a"]'),
                       (4, "b", "image references must be strings, not int"),
                       (5, "c", "image references must be strings, not dict"),
                       (6, "d", got[4][2])]
    assert got[4][2].startswith("unsupported image reference 'data:image/png;base64,AAA") and "…" in got[4][2]
    assert got[5] == (7, "a", "duplicate product id 'a' (first on line 1)")


# --- fingerprints -----------------------------------------------------------------------------------------------

BASE = {"id": "p", "image": "a.jpg", "title": "T", "description": "D", "caption": "C", "color": "red"}


def fingerprint(tmp_path, name, **changes) -> str:
    record = {**BASE, **changes}
    return read_catalog(jsonl(tmp_path / f"{name}.jsonl", record)).rows[0].fingerprint


def test_fingerprint_is_stable_and_changes_with_every_field(tmp_path):
    base = fingerprint(tmp_path, "base")
    assert len(base) == 32 and int(base, 16) >= 0
    assert fingerprint(tmp_path, "again") == base
    # the line does not count, nor the order of the keys
    moved = jsonl(tmp_path / "moved.jsonl", {"id": "other", "image": "z.jpg"}, dict(reversed(BASE.items())))
    assert read_catalog(moved).rows[1].fingerprint == base
    changed = [fingerprint(tmp_path, f"c{i}", **change) for i, change in enumerate([
        {"id": "q"}, {"image": "b.jpg"}, {"image": "a.jpg|b.jpg"}, {"title": "T2"}, {"description": "D2"},
        {"caption": "C2"}, {"color": "blue"}, {"color": ["red", "blue"]}, {"size": "M"}, {"color": 1},
        {"color": "1"},
    ])]
    assert base not in changed and len(set(changed)) == len(changed)


def test_fingerprint_depends_on_where_relative_images_resolve(tmp_path):
    (tmp_path / "other").mkdir()
    assert fingerprint(tmp_path, "here") != fingerprint(tmp_path / "other", "there")


def test_is_url():
    assert is_url("http://x.example/a.jpg") and is_url("HTTPS://x.example")
    assert not any(map(is_url, ["ftp://x/a", "http://", "a.jpg", "/abs/a.jpg", "data:x", "http://[::1"]))


def test_catalog_columns_accept_a_single_string_and_refuse_an_empty_separator():
    assert CatalogColumns(images="img", attributes="color").images == ("img",)
    with pytest.raises(CatalogError):
        CatalogColumns(list_separator="")
