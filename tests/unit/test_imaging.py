"""Tests of searchengine.imaging.safe_open: allow-list, limits, orientation, modes."""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from searchengine import imaging
from searchengine.errors import ImageDecodeError
from searchengine.imaging import safe_open, to_rgb
from tests.support import imagegen

WHITE = (255, 255, 255)


def _assert_rgb(image: Image.Image, size: tuple[int, int]) -> None:
    assert image.mode == "RGB"
    assert image.size == size


def test_public_api() -> None:
    assert set(imaging.__all__) == {
        "ALLOWED_FORMATS", "DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "ImageSource",
        "allowed_formats", "check_image", "image_extensions", "open_regular", "safe_open", "to_rgb",
    }
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"} == set(
        imaging.IMAGE_EXTENSIONS
    )
    assert imaging.IMAGE_EXTENSIONS <= imaging.image_extensions()
    assert set(imaging.ALLOWED_FORMATS) <= set(imaging.allowed_formats())
    assert imaging.DEFAULT_MAX_PIXELS == 100_000_000


@pytest.mark.parametrize("name", ["a.jpg", "a.png", "a.webp", "a.gif", "a.bmp", "a.tif"])
def test_allowed_formats_decode(tmp_path: Path, name: str) -> None:
    path = imagegen.photo(tmp_path / name, seed=7)
    _assert_rgb(safe_open(path), (64, 48))


def test_mpo_phone_jpeg(tmp_path: Path) -> None:
    path = imagegen.mpo(tmp_path / "m.jpg")
    with Image.open(path) as raw:
        assert raw.format == "MPO"
    image = safe_open(path)
    _assert_rgb(image, (16, 8))
    assert image.getpixel((1, 1))[0] > 200  # the first (red) frame
    assert safe_open(path, draft_size=4).size == (8, 4)  # draft mode applies to MPO too


def test_webp_bmp_tiff_helpers(tmp_path: Path) -> None:
    for make in (imagegen.webp, imagegen.bmp, imagegen.tiff):
        _assert_rgb(safe_open(make(tmp_path / f"x.{make.__name__}")), (64, 48))


def test_different_seeds_give_different_pictures() -> None:
    a = np.asarray(imagegen.photo_image(1), dtype=np.int16)
    b = np.asarray(imagegen.photo_image(2), dtype=np.int16)
    assert np.abs(a - b).mean() > 30
    assert np.array_equal(a, np.asarray(imagegen.photo_image(1), dtype=np.int16))


def test_sources_path_str_bytes_and_file_object(tmp_path: Path) -> None:
    path = imagegen.photo(tmp_path / "p.png", seed=3)
    expected = np.asarray(safe_open(path))
    assert np.array_equal(np.asarray(safe_open(str(path))), expected)
    assert np.array_equal(np.asarray(safe_open(path.read_bytes())), expected)
    with path.open("rb") as fh:
        fh.read(5)  # read from the start whatever the position
        assert np.array_equal(np.asarray(safe_open(fh)), expected)
        assert not fh.closed  # the caller's file stays open


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (imagegen.truncated_jpeg, "truncated"),
        (imagegen.truncated_png, "truncated"),
        (imagegen.zero_byte, "empty file"),
        (imagegen.text_as_jpg, "not an image"),
    ],
)
def test_hostile_files_raise(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path / ("bad.png" if make is imagegen.truncated_png else "bad.jpg"))
    with pytest.raises(ImageDecodeError, match=message):
        safe_open(path)


def test_empty_bytes_raise() -> None:
    with pytest.raises(ImageDecodeError, match="empty file"):
        safe_open(b"")


def test_global_pillow_state_untouched(tmp_path: Path) -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    with pytest.raises(ImageDecodeError):
        safe_open(imagegen.truncated_jpeg(tmp_path / "t.jpg"))
    with pytest.raises(ImageDecodeError):
        safe_open(imagegen.png_bomb(tmp_path / "b.png"))
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


def _forbid_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_png_bomb_default_cap_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = imagegen.png_bomb(tmp_path / "bomb.png")  # 30000 x 30000: Pillow's own limit
    assert path.stat().st_size < 10_000
    _forbid_load(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="too large"):
        safe_open(path)
    assert time.perf_counter() - start < 0.5


def test_pixel_cap_message_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 12000 x 12000 = 144M: above our cap, below Pillow's own bomb error (2 x 89.5M).
    path = imagegen.png_bomb(tmp_path / "bomb.png", side=12000)
    _forbid_load(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the DecompressionBombWarning must not escape
        with pytest.raises(ImageDecodeError) as info:
            safe_open(path)
    assert str(info.value) == (
        "image too large: 12000x12000 pixels exceeds the 100,000,000 pixel limit"
    )


def test_small_image_over_custom_cap(tmp_path: Path) -> None:
    path = imagegen.photo(tmp_path / "p.png", seed=1)
    with pytest.raises(ImageDecodeError, match="exceeds the 10 pixel limit"):
        safe_open(path, max_pixels=10)
    assert safe_open(path, max_pixels=64 * 48).size == (64, 48)


@pytest.mark.parametrize("name", ["x.ico", "x.tga", "x.pcx", "x.ppm"])
def test_formats_outside_allow_list_raise(tmp_path: Path, name: str) -> None:
    path = imagegen.photo(tmp_path / name, seed=1, size=(16, 16))
    with Image.open(path) as raw:  # Pillow itself can read it
        assert raw.format not in imaging.allowed_formats()
    with pytest.raises(ImageDecodeError, match="not an image"):
        safe_open(path)


def test_missing_path_and_directory_raise(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="No such file"):
        safe_open(tmp_path / "missing.jpg")
    with pytest.raises(ImageDecodeError, match="cannot read file"):
        safe_open(tmp_path)


def test_special_files_are_refused_without_blocking(tmp_path: Path) -> None:
    import os
    import socket

    os.mkfifo(tmp_path / "pipe.jpg")  # opening it to read would wait for a writer forever
    with pytest.raises(ImageDecodeError, match="^cannot read file: it is a named pipe, not a regular file$"):
        safe_open(tmp_path / "pipe.jpg")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s.jpg"))
        with pytest.raises(ImageDecodeError, match="^cannot read file: No such device"):
            safe_open(tmp_path / "s.jpg")  # open() itself refuses a socket
    with pytest.raises(ImageDecodeError, match="it is a folder"):
        safe_open(tmp_path)


def test_draft_reduces_big_jpeg(tmp_path: Path) -> None:
    path = imagegen.big_jpeg(tmp_path / "big.jpg")
    image = safe_open(path, draft_size=224)
    assert image.mode == "RGB"
    assert min(image.size) >= 224
    assert image.size == (500, 375)  # 1/8 scale: the largest that keeps both sides >= 224
    assert safe_open(path, draft_size=400).size == (1000, 750)
    assert safe_open(path).size == (4000, 3000)


def test_draft_ignored_for_png(tmp_path: Path) -> None:
    path = imagegen.photo(tmp_path / "p.png", seed=1, size=(900, 600))
    assert safe_open(path, draft_size=100).size == (900, 600)


# EXIF orientation -> which stored pixel ends up at the top-left, and the final size.
_ORIENTED = {1: "red", 2: "blue", 3: "blue", 4: "red", 5: "red", 6: "red", 7: "blue", 8: "blue"}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(tmp_path: Path, orientation: int) -> None:
    path = imagegen.exif_rotated_jpeg(tmp_path / "o.jpg", orientation, size=(64, 32))
    image = safe_open(path)
    _assert_rgb(image, (64, 32) if orientation <= 4 else (32, 64))
    r, _, b = image.getpixel((2, 2))
    assert (r > 200 and b < 60) if _ORIENTED[orientation] == "red" else (b > 200 and r < 60)


def test_broken_exif_does_not_fail(tmp_path: Path) -> None:
    path = imagegen.broken_exif_jpeg(tmp_path / "e.jpg")
    with Image.open(path) as raw, pytest.raises(TypeError):
        ImageOps.exif_transpose(raw)  # Pillow itself chokes on this block
    assert safe_open(path).size in {(64, 32), (32, 64)}


def test_exif_error_keeps_untransposed_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import struct

    def broken(image: Image.Image, *, in_place: bool = False) -> None:
        raise struct.error("bad exif")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    image = safe_open(imagegen.exif_rotated_jpeg(tmp_path / "o.jpg", 6))
    _assert_rgb(image, (64, 32))


def test_cmyk_jpeg(tmp_path: Path) -> None:
    _assert_rgb(safe_open(imagegen.cmyk_jpeg(tmp_path / "c.jpg")), (40, 30))


@pytest.mark.parametrize(
    ("make", "opaque"),
    [
        (imagegen.rgba_png, (0, 200, 0)),
        (imagegen.la_png, (100, 100, 100)),
        (imagegen.palette_alpha_png, (200, 30, 30)),
    ],
)
def test_transparency_composited_on_white(tmp_path: Path, make, opaque) -> None:
    image = safe_open(make(tmp_path / "a.png"))
    _assert_rgb(image, (20, 10))
    assert image.getpixel((0, 0)) == WHITE  # fully transparent black -> white
    assert image.getpixel((19, 9)) == opaque


def test_png16_gradient_maps_to_gradient(tmp_path: Path) -> None:
    path = imagegen.png16(tmp_path / "g.png", size=(64, 8))
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    image = safe_open(path)
    _assert_rgb(image, (64, 8))
    row = np.asarray(image)[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0) and len(set(row.tolist())) > 50
    assert abs(row[32] - 130) <= 2  # linear, not clipped


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    image = safe_open(imagegen.animated_gif(tmp_path / "a.gif"))
    _assert_rgb(image, (16, 16))
    assert image.getpixel((8, 8)) == (255, 0, 0)


def test_odd_modes_via_tiff(tmp_path: Path) -> None:
    gradient = np.tile(np.arange(0, 64, dtype=np.float32) / 63.0, (4, 1))
    cases = {
        "F01": Image.fromarray(gradient),  # floats in [0, 1]
        "F255": Image.fromarray(gradient * 255.0),
        "I": Image.fromarray((gradient * 65535).astype(np.int32)),
        "I8": Image.fromarray((gradient * 255).astype(np.int32)),  # 32-bit holding 0..255
        "1": Image.new("1", (64, 4), 1),
        "LAB": Image.new("LAB", (64, 4), (50, 128, 128)),
        "YCbCr": Image.new("YCbCr", (64, 4), (128, 128, 128)),
    }
    for name, source in cases.items():
        path = tmp_path / f"{name}.tif"
        source.save(path, format="TIFF")
        image = safe_open(path)
        _assert_rgb(image, (64, 4))
        if name in ("F01", "F255", "I", "I8"):
            row = np.asarray(image)[0, :, 0].astype(int)
            assert row[0] == 0 and row[-1] == 255 and abs(row[32] - 130) <= 2, name


@pytest.mark.parametrize(
    "mode", ["1", "L", "P", "LA", "La", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
             "LAB", "HSV", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"],
)
def test_to_rgb_every_mode(mode: str) -> None:
    image = to_rgb(Image.new(mode, (5, 3)))
    _assert_rgb(image, (5, 3))


def test_to_rgb_keeps_rgb_and_handles_colour_key() -> None:
    rgb = Image.new("RGB", (4, 4), (10, 20, 30))
    assert to_rgb(rgb) is rgb
    keyed = Image.new("RGB", (4, 4), (10, 20, 30))
    keyed.info["transparency"] = (10, 20, 30)
    assert to_rgb(keyed).getpixel((0, 0)) == WHITE
    premultiplied = Image.new("RGBA", (2, 2), (0, 0, 0, 0)).convert("RGBa")
    assert to_rgb(premultiplied).getpixel((0, 0)) == WHITE


def test_float_non_finite_values() -> None:
    data = np.array([[np.nan, np.inf, -np.inf, 0.5]], dtype=np.float32)
    assert np.asarray(to_rgb(Image.fromarray(data)))[0, :, 0].tolist() == [0, 0, 0, 128]


def test_non_seekable_stream(tmp_path: Path) -> None:
    data = imagegen.photo(tmp_path / "p.jpg", seed=9).read_bytes()

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self._inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[override]
            chunk = self._inner.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    _assert_rgb(safe_open(io.BufferedReader(Pipe())), (64, 48))


# --- fuzzing: only ImageDecodeError or an RGB image, whatever the bytes ---


def _seed_files() -> list[bytes]:
    out = []
    for fmt, size in (("JPEG", (24, 16)), ("PNG", (24, 16)), ("GIF", (12, 8)), ("WEBP", (12, 8)), ("TIFF", (12, 8))):
        buffer = io.BytesIO()
        imagegen.photo_image(3, size).save(buffer, format=fmt)
        out.append(buffer.getvalue())
    return out


_SEEDS = _seed_files()


@st.composite
def _mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["byte", "cut", "huge", "splice"]))
        if kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[max(at, 8):]
        elif kind == "huge":  # sizes, lengths and offsets set to extremes
            data[at : at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00"]))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        if not data:
            break
    return bytes(data)


def _decodes_or_refuses(data: bytes) -> None:
    try:
        image = safe_open(data, max_pixels=4_000_000, draft_size=8 if len(data) % 2 else None)
    except ImageDecodeError:
        return
    assert image.mode == "RGB" and image.width > 0 and image.height > 0
    assert len(image.tobytes()) == image.width * image.height * 3


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_fuzzed_seeds_decode_or_raise_image_decode_error(data: bytes) -> None:
    _decodes_or_refuses(data)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_decode_or_raise_image_decode_error(data: bytes) -> None:
    _decodes_or_refuses(data)
