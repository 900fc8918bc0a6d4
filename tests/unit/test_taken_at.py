"""Tests of searchengine.imaging.taken_at: the EXIF capture date, never an exception."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from searchengine.imaging import safe_open, taken_at

ORIGINAL, DIGITIZED, ORIENTATION, EXIF_IFD = 0x9003, 0x9004, 0x0112, 0x8769


def _jpeg(exif_tags: dict[int, str] | None = None, ifd0: dict[int, object] | None = None, fmt: str = "JPEG") -> bytes:
    """A small image whose Exif IFD holds ``exif_tags`` (and IFD0 ``ifd0``)."""
    exif = Image.Exif()
    for tag, value in (ifd0 or {}).items():
        exif[tag] = value
    if exif_tags:
        exif.get_ifd(EXIF_IFD).update(exif_tags)
    buf = io.BytesIO()  # bytes: an Exif with an empty IFD0 is falsy and some writers would skip it
    Image.new("RGB", (32, 24), (90, 140, 200)).save(buf, fmt, exif=exif.tobytes())
    return buf.getvalue()


def test_date_time_original() -> None:
    data = _jpeg({ORIGINAL: "2021:07:04 18:30:05", DIGITIZED: "2022:01:01 00:00:00"})
    assert taken_at(data) == "2021-07-04T18:30:05"


def test_digitized_when_no_original() -> None:
    assert taken_at(_jpeg({DIGITIZED: "2019:12:31 23:59:59"})) == "2019-12-31T23:59:59"


def test_digitized_when_original_malformed() -> None:
    data = _jpeg({ORIGINAL: "0000:00:00 00:00:00", DIGITIZED: "2019:02:03 04:05:06"})
    assert taken_at(data) == "2019-02-03T04:05:06"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2020:05:06 07:08:09.123", "2020-05-06T07:08:09"),  # subseconds dropped
        ("2020:05:06 07:08:09+02:00", "2020-05-06T07:08:09"),  # time zone dropped
        ("2020-05-06T07:08:09", "2020-05-06T07:08:09"),  # ISO-ish writers
        ("0000:00:00 00:00:00", None),
        ("    :  :     :  :  ", None),
        ("2020:13:01 00:00:00", None),  # month 13
        ("2021:02:29 10:00:00", None),  # not a leap year
        ("2020:01:01 25:00:00", None),
        ("yesterday", None),
        ("", None),
    ],
)
def test_formats_and_malformed(value: str, expected: str | None) -> None:
    assert taken_at(_jpeg({ORIGINAL: value})) == expected


def test_date_in_ifd0_accepted() -> None:
    assert taken_at(_jpeg(ifd0={ORIGINAL: "2018:03:04 05:06:07"})) == "2018-03-04T05:06:07"


def test_no_date() -> None:
    assert taken_at(_jpeg()) is None
    assert taken_at(_jpeg(ifd0={ORIENTATION: 6})) is None


def test_png_without_exif() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    assert taken_at(buf.getvalue()) is None


def test_png_and_webp_with_exif() -> None:
    for fmt in ("PNG", "WEBP"):
        assert taken_at(_jpeg({ORIGINAL: "2017:08:09 10:11:12"}, fmt=fmt)) == "2017-08-09T10:11:12"


def test_pil_image_source() -> None:
    data = _jpeg({ORIGINAL: "2016:01:02 03:04:05"}, ifd0={ORIENTATION: 6})
    with Image.open(io.BytesIO(data)) as image:
        assert taken_at(image) == "2016-01-02T03:04:05"
    assert taken_at(safe_open(data)) == "2016-01-02T03:04:05"  # survives orientation + RGB conversion
    assert taken_at(Image.new("RGB", (4, 4))) is None


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00*\x00\x00\x00\x08", b"\x00" * 100],
)
def test_garbage_never_raises(data: bytes) -> None:
    assert taken_at(data) is None


def test_corrupt_exif_block_never_raises() -> None:
    good = _jpeg({ORIGINAL: "2021:07:04 18:30:05"})
    start = good.index(b"Exif\x00\x00") + 6
    for offset in range(0, 120, 3):  # clobber bytes across the TIFF header and IFDs
        broken = bytearray(good)
        broken[start + offset : start + offset + 4] = b"\xff\xff\xff\xff"
        assert taken_at(bytes(broken)) in (None, "2021-07-04T18:30:05")


def test_truncated_jpeg() -> None:
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[ORIGINAL] = "2021:07:04 18:30:05"
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(buf, "JPEG", exif=exif.tobytes())
    data = buf.getvalue()
    assert taken_at(data[:40]) is None
    assert taken_at(data[: len(data) // 2]) == "2021-07-04T18:30:05"  # only headers are read


def test_wrong_types_never_raise() -> None:
    assert taken_at("2021:07:04 18:30:05") is None  # type: ignore[arg-type]
    assert taken_at(None) is None  # type: ignore[arg-type]
