"""Captions and metadata stored next to an image (clip-retrieval / webdataset style).

For ``photos/0001.jpg``, ``photos/0001.txt`` holds the caption and ``photos/0001.json``
an object with a caption and metadata, e.g.
``{"caption": "...", "url": "...", "tags": ["a", "b"], "exif": {"Make": "Canon"}}``.
:func:`read_sidecar` never raises for a bad sidecar: the problem is reported in
:attr:`Sidecar.error` and the image is still indexed.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = ["SIDECAR_EXTENSIONS", "Sidecar", "read_sidecar", "sidecar_paths"]

SIDECAR_EXTENSIONS = (".txt", ".json")

#: JSON keys read as the caption, in order of preference (a .txt file comes first).
CAPTION_KEYS = ("caption", "text", "title")
#: Keys never turned into attributes: the caption itself and clip-retrieval/img2dataset bookkeeping.
SKIPPED_KEYS = frozenset({
    "caption", "text", "key", "status", "error_message", "original_width", "original_height",
    "width", "height", "sha256", "md5",
})

Scalar = Union[str, float]
_Attributes = dict[str, tuple[Scalar, ...]]


@dataclass(frozen=True)
class Sidecar:
    """What the sidecar files of one image say; all empty when it has none."""

    caption: str | None = None
    #: multi-valued, like a catalog's attributes: strings, or numbers as floats
    attributes: _Attributes = field(default_factory=dict)
    #: e.g. "photo.json: invalid JSON at line 3" (several problems are joined by "; ")
    error: str | None = None


def sidecar_paths(image_path: str | os.PathLike[str]) -> tuple[str, str]:
    """The (.txt, .json) sidecar paths of an image: same folder, same stem."""
    stem = os.path.splitext(os.fspath(image_path))[0]
    return stem + ".txt", stem + ".json"


def read_sidecar(image_path: str | os.PathLike[str], max_bytes: int = 1 << 20) -> Sidecar:
    """Read the caption and metadata next to ``image_path``; missing files are not an error."""
    txt_path, json_path = sidecar_paths(image_path)
    errors: list[str] = []
    caption: str | None = None
    attributes: _Attributes = {}

    text = _read_text(txt_path, max_bytes, errors)
    if text is not None:
        caption = _clean(text)

    text = _read_text(json_path, max_bytes, errors)
    if text is not None:
        obj = _parse_object(text, os.path.basename(json_path), errors)
        if obj is not None:
            if caption is None:
                caption = next(
                    (c for c in (_clean(obj.get(k)) for k in CAPTION_KEYS) if c is not None), None
                )
            attributes = _attributes(obj)
    return Sidecar(caption, attributes, "; ".join(errors) or None)


def _read_text(path: str, max_bytes: int, errors: list[str]) -> str | None:
    """The UTF-8 text of ``path`` (BOM stripped); None when absent or bad (then ``errors`` says why)."""
    name = os.path.basename(path)
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:
        errors.append(f"{name}: cannot read ({_reason(exc)})")
        return None
    if not stat.S_ISREG(info.st_mode):
        errors.append(f"{name}: not a regular file")
        return None
    if info.st_size > max_bytes:
        errors.append(f"{name}: larger than the {max_bytes:,} byte limit")
        return None
    try:
        with open(path, "rb") as fp:
            data = fp.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        errors.append(f"{name}: cannot read ({_reason(exc)})")
        return None
    if len(data) > max_bytes:  # grew since stat
        errors.append(f"{name}: larger than the {max_bytes:,} byte limit")
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        errors.append(f"{name}: not UTF-8 text (byte {exc.start})")
        return None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _parse_object(text: str, name: str, errors: list[str]) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        errors.append(f"{name}: invalid JSON at line {exc.lineno}")
        return None
    except (ValueError, RecursionError) as exc:  # e.g. an over-long integer, or nesting too deep
        errors.append(f"{name}: invalid JSON ({type(exc).__name__})")
        return None
    if not isinstance(obj, dict):
        errors.append(f"{name}: not a JSON object")
        return None
    return obj


def _clean(value: object) -> str | None:
    """Whitespace collapsed to single spaces; None for non-strings and empty text."""
    if not isinstance(value, str):
        return None
    return " ".join(value.split()) or None


def _scalar(value: object) -> Scalar | None:
    """A JSON scalar as an attribute value; None for null, empty text, non-finite numbers, containers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    if isinstance(value, str):
        return value.strip() or None
    return None


def _values(value: object) -> tuple[Scalar, ...]:
    """A scalar or a list of scalars as attribute values (distinct, in order); () otherwise."""
    items = value if isinstance(value, list) else [value]
    found = (_scalar(item) for item in items)
    return tuple(dict.fromkeys(v for v in found if v is not None))


def _attributes(obj: dict[str, Any]) -> _Attributes:
    """Scalars and lists of scalars; objects flattened one level to ``key.sub``; the rest skipped."""
    out: _Attributes = {}
    for key, value in obj.items():
        key = key.strip()
        if not key or key in SKIPPED_KEYS:
            continue
        if key == "exif" and isinstance(value, str) and value.lstrip().startswith("{"):
            value = _nested_json(value)  # img2dataset stores its exif object as a JSON string
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                sub = sub.strip()
                if sub and (values := _values(sub_value)):
                    out[f"{key}.{sub}"] = values
        elif values := _values(value):
            out[key] = values
    return out


def _nested_json(text: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text
