"""Tests of searchengine.ocr: text read back from rendered images, order, quiet logs, missing extra."""

from __future__ import annotations

import logging
import re
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from searchengine import ocr
from searchengine.errors import ConfigError
from searchengine.ocr import TextReader


@pytest.fixture(scope="module")
def reader() -> TextReader:
    """A real reader, shared by the module (loading the models once); skipped without rapidocr."""
    pytest.importorskip("rapidocr_onnxruntime")
    return TextReader()


def _font(size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=size)
    assert isinstance(font, ImageFont.FreeTypeFont)  # a scalable font, not the 11 px bitmap one
    return font


def _words(text: str) -> set[str]:
    """Words of 4+ letters, lower case: what OCR must get right."""
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 4}


def _busy_background(width: int, height: int, seed: int = 0) -> Image.Image:
    """Photo-like clutter: crossed colour waves, a gradient and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = np.stack([
        120 + 100 * np.sin(xx / 37) * np.cos(yy / 53),
        140 + 80 * np.sin((xx + yy) / 29),
        60 + 120 * xx / width,
    ], axis=-1) + rng.normal(0, 25, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_dark_text_on_light_background(reader: TextReader) -> None:
    image = Image.new("RGB", (1000, 700), (240, 238, 228))
    draw = ImageDraw.Draw(image)
    draw.text((50, 100), "GOLDEN BAKERY", font=_font(48), fill=(20, 20, 20))
    draw.text((80, 400), "north harbor ferry", font=_font(48), fill=(10, 10, 60))
    text = reader.read(image)
    assert _words(text) == {"golden", "bakery", "north", "harbor", "ferry"}
    assert text.lower().index("bakery") < text.lower().index("harbor")  # top line first
    assert text.count("\n") == 1


def test_text_on_busy_background(reader: TextReader) -> None:
    image = _busy_background(1000, 700)
    draw = ImageDraw.Draw(image)
    draw.text((60, 200), "SILVER MOUNTAIN", font=_font(56), fill="white", stroke_width=3, stroke_fill="black")
    draw.text((300, 500), "quiet garden", font=_font(64), fill="black")
    assert _words(reader.read(image)) >= {"silver", "mountain", "quiet", "garden"}


def test_reading_order_rows_then_columns(reader: TextReader) -> None:
    image = Image.new("L", (1000, 500), 255)  # any mode is accepted
    draw = ImageDraw.Draw(image)
    draw.text((600, 60), "BRAVO", font=_font(48), fill=0)
    draw.text((60, 66), "ALPHA", font=_font(48), fill=0)  # same row, slightly lower, further left
    draw.text((300, 300), "CHARLIE", font=_font(48), fill=0)
    assert reader.read(image).upper() == "ALPHA BRAVO\nCHARLIE"  # pieces of one row joined by a space


def test_large_image_is_downscaled_and_still_read(reader: TextReader) -> None:
    image = Image.new("RGB", (4000, 2400), "white")
    ImageDraw.Draw(image).text((400, 1000), "WINTER MARKET", font=_font(240), fill="navy")
    assert _words(reader.read(image)) == {"winter", "market"}


def test_blank_and_tiny_images(reader: TextReader) -> None:
    assert reader.read(Image.new("RGB", (1000, 700), "white")) == ""
    assert reader.read(_busy_background(640, 480, seed=3).resize((64, 48))) == ""
    assert reader.read(Image.new("RGB", (1, 1))) == ""
    assert reader.read(Image.new("RGBA", (300, 200), (0, 0, 0, 0))) == ""


def test_rapidocr_logging_is_quiet(reader: TextReader) -> None:
    reader.read(Image.new("RGB", (50, 50), "white"))
    for name in ("RapidOCR", "OrtInferSession"):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING


class _FakeEngine:
    """Stands in for RapidOCR: records the array it gets and returns canned lines."""

    def __init__(self, result: list | None) -> None:
        self.result = result
        self.shapes: list[tuple[int, ...]] = []
        self.pixels: np.ndarray | None = None

    def __call__(self, pixels: np.ndarray):
        self.shapes.append(pixels.shape)
        self.pixels = pixels
        return (self.result, [0.1, 0.0, 0.1]) if self.result else (None, None)


def _box(x: float, y: float, w: float = 100, h: float = 30) -> list[list[float]]:
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]


def _fake_reader(result: list | None, **kw) -> tuple[TextReader, _FakeEngine]:
    reader, engine = TextReader(**kw), _FakeEngine(result)
    reader._engine = engine
    return reader, engine


def test_downscale_and_bgr_without_the_model() -> None:
    reader, engine = _fake_reader(None, max_side=800)
    image = Image.new("RGB", (2000, 1000), (255, 0, 0))
    assert reader.read(image) == ""
    assert engine.shapes == [(400, 800, 3)]
    assert engine.pixels is not None and engine.pixels[0, 0].tolist() == [0, 0, 255]  # red, as BGR
    reader.read(Image.new("RGB", (640, 480)))
    assert engine.shapes[-1] == (480, 640, 3)  # small images keep their size


def test_ordering_and_confidence_without_the_model() -> None:
    result = [
        [_box(10, 300), "third", 0.9],
        [_box(500, 12), "second", 0.8],  # same row as "first" (centre within its span)
        [_box(10, 5), "first", 0.95],
        [_box(10, 600), "dropped", 0.3],
        [_box(10, 700), "   ", 0.99],
    ]
    reader, _ = _fake_reader(result, min_confidence=0.5)
    assert reader.read(Image.new("RGB", (800, 800))) == "first second\nthird"


def test_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # makes the import fail
    assert ocr.available() is False
    reader = TextReader()  # constructing loads nothing, so it works
    with pytest.raises(ConfigError, match=re.escape("pip install 'searchengine[ocr]'")) as info:
        reader.read(Image.new("RGB", (10, 10)))
    assert str(info.value) == "text recognition needs the ocr extra: pip install 'searchengine[ocr]'"


def test_bad_max_side() -> None:
    with pytest.raises(ConfigError):
        TextReader(max_side=8)
