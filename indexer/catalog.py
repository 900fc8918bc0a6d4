"""Read a product catalog (CSV, TSV, JSON Lines, JSON or Parquet) into validated rows.

Each row is a product: an id, one or more images (local paths or http(s) URLs), a title,
description and caption, and any other columns as multi-valued attributes. A bad row
becomes a :class:`RowError` with its line number and the rest of the file still reads;
a problem with the file itself (format, missing columns, encoding) raises CatalogError.

    >>> catalog = read_catalog("products.csv")
    >>> catalog.rows[0].images, catalog.errors
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import math
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, Sequence, Union
from urllib.parse import unquote, urlsplit

from searchengine.errors import CatalogError

__all__ = ["CatalogColumns", "CatalogRow", "RowError", "Catalog", "read_catalog", "is_url", "FORMATS"]

ID_COLUMNS = ("id", "product_id", "sku", "item_id")
IMAGE_COLUMNS = ("images", "image", "image_urls", "image_url", "image_paths", "image_path", "img", "url")
TITLE_COLUMNS = ("title", "name", "product_name")
DESCRIPTION_COLUMNS = ("description", "desc", "body")
CAPTION_COLUMNS = ("caption", "text")
IMAGE_SEPARATOR = "|"

#: File suffix -> format name.
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
           ".parquet": "parquet"}
_FORMAT_NAMES = frozenset(FORMATS.values()) | {"ndjson"}

Value = Union[str, float]
Record = dict[str, Any]
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: "C:\..." stays a path
_PANDAS_INDEX = re.compile(r"__index_level_\d+__")


def _as_tuple(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class CatalogColumns:
    """Which columns hold what; ``None``/``()`` means auto-detect (see the ``*_COLUMNS`` candidates)."""

    id: str | None = None
    images: tuple[str, ...] = ()
    title: str | None = None
    description: str | None = None
    caption: str | None = None
    #: None: every other column; (): none
    attributes: tuple[str, ...] | None = None
    #: CSV/TSV cells of these columns are split on list_separator
    list_columns: tuple[str, ...] = ("tags", "keywords")
    list_separator: str = "|"

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", _as_tuple(self.images))
        object.__setattr__(self, "list_columns", _as_tuple(self.list_columns))
        if self.attributes is not None:
            object.__setattr__(self, "attributes", _as_tuple(self.attributes))
        if not self.list_separator:
            raise CatalogError("the list separator must not be empty")


@dataclass(frozen=True)
class CatalogRow:
    """One valid product. ``line``: where its record starts (CSV/JSONL), or its 1-based row/item number."""

    line: int
    product_id: str
    images: tuple[str, ...]  # absolute local paths, or URLs as given
    title: str | None
    description: str | None
    caption: str | None
    attributes: dict[str, tuple[Value, ...]]
    fingerprint: str  # blake2b-128 of everything but ``line``


@dataclass(frozen=True)
class RowError:
    line: int
    product_id: str | None
    error: str


@dataclass
class Catalog:
    path: str  # absolute
    columns: CatalogColumns  # as resolved against the file's columns
    rows: list[CatalogRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    format: str = ""


class _Bad(Exception):
    """A per-row problem."""


def is_url(ref: str) -> bool:
    """True for an ``http://`` or ``https://`` URL with a host."""
    try:
        parts = urlsplit(ref)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def read_catalog(path: str | os.PathLike[str], columns: CatalogColumns = CatalogColumns(), *,
                 format: str | None = None) -> Catalog:
    """Read and validate a catalog; the format comes from the file's suffix unless ``format`` is given."""
    file = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    fmt = _format_of(file, format)
    if not file.exists():
        raise CatalogError(f"no such catalog file: {file}")
    if file.is_dir():
        raise CatalogError(f"{file} is a folder, not a catalog file")
    with ExitStack() as stack:
        try:
            if fmt in ("csv", "tsv"):
                names, records = _read_csv(file, stack, "\t" if fmt == "tsv" else ",")
            elif fmt == "jsonl":
                names, records = _read_jsonl(file)
            elif fmt == "json":
                names, records = _read_json(file)
            else:
                names, records = _read_parquet(file, stack)
            cols = _resolve(columns, names, file)
            catalog = Catalog(str(file), cols, format=fmt)
            _build(catalog, records, str(file.parent), fmt in ("csv", "tsv"))
        except UnicodeDecodeError as exc:
            raise CatalogError(f"{file} is not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise CatalogError(f"cannot read {file}: {exc.strerror or exc}") from None
    return catalog


def _format_of(file: Path, given: str | None) -> str:
    supported = ", ".join(FORMATS)
    if given:
        name = given.lower().lstrip(".")
        if name not in _FORMAT_NAMES:
            raise CatalogError(f"unknown catalog format {given!r}; supported: {', '.join(sorted(_FORMAT_NAMES))}")
        return "jsonl" if name == "ndjson" else name
    fmt = FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise CatalogError(f"cannot tell the format of {file.name} from its suffix; supported: {supported}")
    return fmt


# --- readers: (column names, iterator of (line, record or a per-row error message)) -------------------------

Records = Iterator[tuple[int, Union[Record, str]]]


def _read_csv(file: Path, stack: ExitStack, delimiter: str) -> tuple[list[str], Records]:
    f = stack.enter_context(open(file, encoding="utf-8-sig", newline=""))
    reader = csv.reader(f, delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise CatalogError(f"{file}, line 1: {exc}") from None
    if header is None:
        raise CatalogError(f"{file} is empty (a header line is needed)")
    names = [h.strip() for h in header]
    dupes = sorted({n for n in names if n and names.count(n) > 1})
    if dupes:
        raise CatalogError(f"{file}: column {dupes[0]!r} appears more than once in the header")

    def records() -> Records:
        start = reader.line_num + 1
        try:
            for cells in reader:
                line, start = start, reader.line_num + 1
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) > len(names):
                    yield line, f"{len(cells)} fields but the header has {len(names)}"
                    continue
                yield line, {n: c for n, c in zip(names, cells) if n}
        except csv.Error as exc:
            raise CatalogError(f"{file}, line {start}: {exc}") from None

    return names, records()


def _strip_keys(obj: dict) -> Record:
    return {str(k).strip(): v for k, v in obj.items()}


def _read_jsonl(file: Path) -> tuple[list[str], Records]:
    names: dict[str, None] = {}
    records: list[tuple[int, Record | str]] = []
    with open(file, encoding="utf-8-sig") as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                records.append((n, f"invalid JSON ({exc.msg} at column {exc.colno})"))
                continue
            if not isinstance(obj, dict):
                records.append((n, f"a JSON {type(obj).__name__}, not an object"))
                continue
            rec = _strip_keys(obj)
            names.update(dict.fromkeys(rec))
            records.append((n, rec))
    return list(names), iter(records)


def _read_json(file: Path) -> tuple[list[str], Records]:
    try:
        data = json.loads(file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # JSON Lines in a .json file
            return _read_jsonl(file)
        raise CatalogError(f"{file}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, list):
        raise CatalogError(f"{file}: expected a JSON array of objects, found a JSON {type(data).__name__}")
    names: dict[str, None] = {}
    records: list[tuple[int, Record | str]] = []
    for n, obj in enumerate(data, 1):
        if isinstance(obj, dict):
            rec = _strip_keys(obj)
            names.update(dict.fromkeys(rec))
            records.append((n, rec))
        else:
            records.append((n, f"item {n} is a JSON {type(obj).__name__}, not an object"))
    return list(names), iter(records)


def _read_parquet(file: Path, stack: ExitStack) -> tuple[list[str], Records]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CatalogError("reading Parquet needs pyarrow: pip install 'searchengine[parquet]'") from None
    try:
        pf = pq.ParquetFile(file)
    except (ValueError, OSError) as exc:  # ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise CatalogError(f"cannot read {file} as Parquet: {exc}") from None
    if hasattr(pf, "close"):  # pyarrow >= 8
        stack.callback(pf.close)

    def records() -> Records:
        line = 0
        try:
            for batch in pf.iter_batches(batch_size=4096):
                for rec in batch.to_pylist():
                    line += 1
                    yield line, _strip_keys(rec)
        except (ValueError, OSError) as exc:
            raise CatalogError(f"cannot read {file} as Parquet (after row {line}): {exc}") from None

    return [n.strip() for n in pf.schema_arrow.names], records()


# --- columns -----------------------------------------------------------------------------------------------

def _resolve(spec: CatalogColumns, names: list[str], file: Path) -> CatalogColumns:
    available = [n for n in names if n]
    lower = {}
    for n in available:
        lower.setdefault(n.lower(), n)
    listing = ", ".join(available) or "(none)"

    def named(name: str, option: str) -> str:
        name = name.strip()
        found = name if name in available else lower.get(name.lower())
        if found is None:
            raise CatalogError(f"{file} has no column {name!r} ({option}); its columns: {listing}")
        return found

    def detect(candidates: tuple[str, ...]) -> str | None:
        return next((lower[c] for c in candidates if c in lower), None)

    id_col = named(spec.id, "--id-column") if spec.id else detect(ID_COLUMNS)
    if id_col is None:
        raise CatalogError(f"{file}: no product id column (looked for {', '.join(ID_COLUMNS)}); "
                           f"pass --id-column NAME. Its columns: {listing}")
    if spec.images:
        images = tuple(dict.fromkeys(named(c, "--image-column") for c in spec.images))
    else:
        found = detect(IMAGE_COLUMNS)
        if found is None:
            raise CatalogError(f"{file}: no image column (looked for {', '.join(IMAGE_COLUMNS)}); "
                               f"pass --image-column NAME. Its columns: {listing}")
        images = (found,)
    title = named(spec.title, "--title-column") if spec.title else detect(TITLE_COLUMNS)
    description = (named(spec.description, "--description-column") if spec.description
                   else detect(DESCRIPTION_COLUMNS))
    caption = named(spec.caption, "--caption-column") if spec.caption else detect(CAPTION_COLUMNS)
    if spec.attributes is None:
        used = {id_col, *images, title, description, caption}
        attributes = tuple(n for n in available if n not in used and not _PANDAS_INDEX.fullmatch(n))
    else:
        attributes = tuple(dict.fromkeys(named(c, "--attribute-column") for c in spec.attributes))
    return replace(spec, id=id_col, images=images, title=title, description=description, caption=caption,
                   attributes=attributes)


# --- rows --------------------------------------------------------------------------------------------------

def _build(catalog: Catalog, records: Records, base: str, split_lists: bool) -> None:
    cols = catalog.columns
    lists = {c.lower() for c in cols.list_columns}
    split = frozenset(n for n in cols.attributes or () if n.lower() in lists) if split_lists else frozenset()
    seen: dict[str, int] = {}
    for line, rec in records:
        if isinstance(rec, str):
            catalog.errors.append(RowError(line, None, rec))
            continue
        pid: str | None = None
        try:
            pid = _product_id(rec.get(cols.id))  # type: ignore[arg-type]
            if pid in seen:
                raise _Bad(f"duplicate product id {pid!r} (first on line {seen[pid]})")
            seen[pid] = line
            catalog.rows.append(_row(line, pid, rec, cols, base, split))
        except _Bad as exc:
            catalog.errors.append(RowError(line, pid, str(exc)))


def _row(line: int, pid: str, rec: Record, cols: CatalogColumns, base: str, split: frozenset[str]) -> CatalogRow:
    refs: list[str] = []
    for col in cols.images:
        refs.extend(_image_refs(rec.get(col), base))
    images = tuple(dict.fromkeys(refs))
    if not images:
        raise _Bad("no images")
    title, description, caption = (_text(rec.get(c)) if c else None for c in (cols.title, cols.description,
                                                                               cols.caption))
    attributes = _attributes(rec, cols.attributes or (), split, cols.list_separator)
    payload = json.dumps([pid, images, title, description, caption, attributes], sort_keys=True,
                         ensure_ascii=False, separators=(",", ":"))
    fingerprint = hashlib.blake2b(payload.encode("utf-8"), digest_size=16).hexdigest()
    return CatalogRow(line, pid, images, title, description, caption, attributes, fingerprint)


def _product_id(value: Any) -> str:
    if isinstance(value, bool) or isinstance(value, (list, tuple, dict)):
        raise _Bad(f"the product id must be a string or a number, not {json.dumps(value, default=str)[:80]}")
    if isinstance(value, float):
        if not math.isfinite(value):
            value = None
        elif value.is_integer():
            value = int(value)
    pid = "" if value is None else str(value).strip()
    if not pid:
        raise _Bad("missing product id")
    return pid


def _short(ref: str, limit: int = 80) -> str:
    return ref if len(ref) <= limit else ref[:limit] + "…"


def _image_refs(value: Any, base: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        parts: list[Any] = value.split(IMAGE_SEPARATOR)
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise _Bad(f"image references must be strings, not {type(value).__name__}")
    out = []
    for part in parts:
        if part is None:
            continue
        if not isinstance(part, str):
            raise _Bad(f"image references must be strings, not {type(part).__name__}")
        if part.strip():
            out.append(_image_ref(part.strip(), base))
    return out


def _image_ref(ref: str, base: str) -> str:
    """A URL as given, or a local path made absolute (relative to ``base``, ``~`` expanded)."""
    if is_url(ref):
        return ref
    if "\0" in ref:
        raise _Bad("an image path contains a NUL character")
    match = _SCHEME.match(ref)
    if match:
        parts = urlsplit(ref)
        if match.group(1).lower() != "file" or parts.netloc not in ("", "localhost"):
            raise _Bad(f"unsupported image reference {_short(ref)!r}: expected an http(s) URL or a file path")
        ref = unquote(parts.path)
    return os.path.normpath(os.path.join(base, os.path.expanduser(ref)))


def _scalar(value: Any) -> Value | None:
    """An attribute value: strings stripped, numbers as float, bools as "true"/"false", the rest as text."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (int, float, Decimal)):
        try:
            number = float(value)
        except OverflowError:
            return str(value)
        return number if math.isfinite(number) else None
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8").strip() or None
        except UnicodeDecodeError:
            return None
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str) if value else None
    return str(value)


def _text(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        return "\n".join(t for t in map(_text, value) if t) or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value) if math.isfinite(value) else None
    scalar = _scalar(value)
    return None if scalar is None else str(scalar)


def _attributes(rec: Record, names: Sequence[str], split: frozenset[str], sep: str) -> dict[str, tuple[Value, ...]]:
    out: dict[str, list[Value]] = {}

    def add(key: str, value: Any) -> None:
        bucket = out.setdefault(key, [])
        for item in value if isinstance(value, (list, tuple)) else (value,):
            scalar = _scalar(item)
            if scalar is not None and scalar not in bucket:
                bucket.append(scalar)

    for name in names:
        value = rec.get(name)
        if isinstance(value, dict):  # one level flattened to "name.key"; deeper values become JSON text
            for key, sub in value.items():
                add(f"{name}.{str(key).strip()}", sub)
        elif isinstance(value, str) and name in split:
            add(name, value.split(sep))
        else:
            add(name, value)
    return {k: tuple(v) for k, v in out.items() if v}
