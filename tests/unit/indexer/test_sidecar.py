"""Tests of indexer.sidecar: captions and metadata in .txt/.json files next to images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from indexer.sidecar import SIDECAR_EXTENSIONS, Sidecar, read_sidecar, sidecar_paths
from tests.support.privileges import permissions_enforced


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "photos" / "0001.jpg"
    path.parent.mkdir()
    path.write_bytes(b"\xff\xd8 not really decoded here")
    return path


def _write_json(image: Path, obj: object) -> None:
    image.with_suffix(".json").write_text(json.dumps(obj), encoding="utf-8")


def test_paths() -> None:
    assert SIDECAR_EXTENSIONS == (".txt", ".json")
    assert sidecar_paths("photos/0001.jpg") == ("photos/0001.txt", "photos/0001.json")
    assert sidecar_paths(Path("/a/b.c/x.y.PNG")) == ("/a/b.c/x.y.txt", "/a/b.c/x.y.json")
    assert sidecar_paths("noext") == ("noext.txt", "noext.json")


def test_no_sidecar(image: Path) -> None:
    assert read_sidecar(str(image)) == Sidecar(None, {}, None)


def test_txt_caption(image: Path) -> None:
    image.with_suffix(".txt").write_bytes("\ufeff  A red\tbicycle\r\n leaning on a  wall \n".encode())
    assert read_sidecar(str(image)) == Sidecar("A red bicycle leaning on a wall", {}, None)


def test_empty_txt_is_no_caption(image: Path) -> None:
    image.with_suffix(".txt").write_text(" \n\t ")
    assert read_sidecar(image).caption is None


def test_json_caption_and_metadata(image: Path) -> None:
    _write_json(image, {
        "caption": "a  dog on\na beach", "url": "https://example.com/0001.jpg", "key": "0001",
        "status": "success", "error_message": None, "width": 640, "height": 480,
        "original_width": 1280, "original_height": 960, "sha256": "ab" * 32, "md5": "cd" * 16,
        "tags": ["dog", "beach", "", None, "dog", 3, True], "score": 0.25, "count": 7, "nsfw": False,
        "exif": {"Make": "Canon", "ISO": 200, "Flags": ["a", "b"], "Deeper": {"x": 1}, "Empty": ""},
        "nothing": None, "blank": "  ", "empty_list": [], "nested_lists": [[1, 2]], "objects": [{"a": 1}],
    })
    sidecar = read_sidecar(str(image))
    assert sidecar.error is None
    assert sidecar.caption == "a dog on a beach"
    assert sidecar.attributes == {
        "url": ("https://example.com/0001.jpg",),
        "tags": ("dog", "beach", 3.0, "true"),
        "score": (0.25,),
        "count": (7.0,),
        "nsfw": ("false",),
        "exif.Make": ("Canon",),
        "exif.ISO": (200.0,),
        "exif.Flags": ("a", "b"),
    }
    assert all(type(v) in (str, float) for values in sidecar.attributes.values() for v in values)


@pytest.mark.parametrize(
    "obj, caption",
    [
        ({"text": "from text", "title": "from title"}, "from text"),
        ({"title": " from  title "}, "from title"),
        ({"caption": "", "text": "  ", "title": "third"}, "third"),
        ({"caption": 42}, None),
        ({}, None),
    ],
)
def test_json_caption_keys(image: Path, obj: dict, caption: str | None) -> None:
    _write_json(image, obj)
    sidecar = read_sidecar(image)
    assert sidecar.caption == caption
    assert "caption" not in sidecar.attributes and "text" not in sidecar.attributes


def test_txt_wins_over_json(image: Path) -> None:
    image.with_suffix(".txt").write_text("from txt")
    _write_json(image, {"caption": "from json", "source": "web"})
    assert read_sidecar(image) == Sidecar("from txt", {"source": ("web",)}, None)


def test_img2dataset_exif_string(image: Path) -> None:
    _write_json(image, {"exif": json.dumps({"Image Make": "NIKON", "EXIF ISOSpeedRatings": "400"})})
    assert read_sidecar(image).attributes == {"exif.Image Make": ("NIKON",), "exif.EXIF ISOSpeedRatings": ("400",)}


def test_non_finite_and_huge_numbers(image: Path) -> None:
    image.with_suffix(".json").write_text('{"a": NaN, "b": Infinity, "c": 1e400, "d": ' + "9" * 400 + ', "e": 1}')
    assert read_sidecar(image).attributes == {"e": (1.0,)}


def test_invalid_json_keeps_txt_caption(image: Path) -> None:
    image.with_suffix(".txt").write_text("still a caption")
    image.with_suffix(".json").write_text('{\n  "caption": "x",\n  "url": oops\n}')
    assert read_sidecar(image) == Sidecar("still a caption", {}, "0001.json: invalid JSON at line 3")


@pytest.mark.parametrize(
    "content, message",
    [
        ('["a", "b"]', "0001.json: not a JSON object"),
        ('"just a string"', "0001.json: not a JSON object"),
        ("", "0001.json: invalid JSON at line 1"),
        ("[" * 100_000 + "]" * 100_000, "0001.json: invalid JSON (RecursionError)"),
        ('{"n": ' + "1" * 5000 + "}", "0001.json: invalid JSON (ValueError)"),
    ],
)
def test_bad_json(image: Path, content: str, message: str) -> None:
    image.with_suffix(".json").write_text(content)
    assert read_sidecar(image) == Sidecar(None, {}, message)


def test_bad_txt_keeps_json(image: Path) -> None:
    image.with_suffix(".txt").write_bytes(b"caf\xe9 latin-1")
    _write_json(image, {"caption": "json caption", "lang": "fr"})
    sidecar = read_sidecar(image)
    assert sidecar.caption == "json caption"
    assert sidecar.attributes == {"lang": ("fr",)}
    assert sidecar.error == "0001.txt: not UTF-8 text (byte 3)"


def test_both_bad(image: Path) -> None:
    image.with_suffix(".txt").write_bytes(b"\xff\xfe")
    image.with_suffix(".json").write_bytes(b"\xc3")
    error = read_sidecar(image).error
    assert error is not None and error.startswith("0001.txt: not UTF-8") and "; 0001.json: not UTF-8" in error


def test_size_limit(image: Path) -> None:
    image.with_suffix(".txt").write_text("x" * 101)
    _write_json(image, {"caption": "small"})
    sidecar = read_sidecar(image, max_bytes=100)
    assert sidecar.caption == "small"
    assert sidecar.error == "0001.txt: larger than the 100 byte limit"
    assert read_sidecar(image, max_bytes=101).caption == "x" * 101


def test_not_a_regular_file(image: Path) -> None:
    image.with_suffix(".json").mkdir()
    assert read_sidecar(image).error == "0001.json: not a regular file"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_fifo_does_not_block(image: Path) -> None:
    os.mkfifo(image.with_suffix(".txt"))
    assert read_sidecar(image).error == "0001.txt: not a regular file"


def test_unreadable(image: Path) -> None:
    txt = image.with_suffix(".txt")
    txt.write_text("secret")
    txt.chmod(0)
    try:
        with permissions_enforced():  # as root too
            assert read_sidecar(image).error == "0001.txt: cannot read (Permission denied)"
    finally:
        txt.chmod(0o644)
