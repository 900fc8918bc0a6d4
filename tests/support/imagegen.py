"""Deterministic test images, written on demand (no binary fixtures in the repo).

Every function takes the file's path (its parent folder is created), writes the file
and returns the path as a ``pathlib.Path``. Pictures come from seeded numpy, so the
same arguments always give the same bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "animated_gif",
    "big_jpeg",
    "bmp",
    "broken_exif_jpeg",
    "cmyk_jpeg",
    "exif_rotated_jpeg",
    "la_png",
    "mpo",
    "palette_alpha_png",
    "photo",
    "photo_image",
    "png16",
    "png_bomb",
    "rgba_png",
    "text_as_jpg",
    "tiff",
    "truncated_jpeg",
    "truncated_png",
    "webp",
    "zero_byte",
]

_SUFFIX_FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".gif": "GIF",
    ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".ico": "ICO", ".tga": "TGA",
    ".pcx": "PCX", ".ppm": "PPM",
}
_EXIF_ORIENTATION = 0x0112


def _target(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(image: Image.Image, path: str | Path, fmt: str | None = None, **params: object) -> Path:
    path = _target(path)
    fmt = fmt or _SUFFIX_FORMATS[path.suffix.lower()]
    if fmt == "JPEG":
        params.setdefault("quality", 90)
    image.save(path, format=fmt, **params)
    return path


def photo_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """An RGB picture: a smooth colour field plus a few shapes, all chosen by ``seed``.

    Different seeds give visually very different pictures (different palettes,
    gradients and shape layouts).
    """
    rng = np.random.default_rng(seed)
    width, height = size
    grid = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)  # coarse colour grid
    image = Image.fromarray(grid).resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = (x0, y0, max(x1, x0 + 2), max(y1, y0 + 2))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    return image


def photo(path: str | Path, seed: int, size: tuple[int, int] = (64, 48),
          fmt: str | None = None) -> Path:
    """A distinct picture for ``seed``; the format comes from the suffix unless ``fmt``."""
    return _save(photo_image(seed, size), path, fmt)


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def _truncated(path: str | Path, fmt: str, keep: float) -> Path:
    buffer = io.BytesIO()
    _noise((64, 64)).save(buffer, format=fmt)
    data = buffer.getvalue()
    path = _target(path)
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def truncated_jpeg(path: str | Path) -> Path:
    """A JPEG cut off in the middle of its scan data."""
    return _truncated(path, "JPEG", 0.6)


def truncated_png(path: str | Path) -> Path:
    """A PNG cut off in the middle of its IDAT data."""
    return _truncated(path, "PNG", 0.6)


def zero_byte(path: str | Path) -> Path:
    """An empty file."""
    path = _target(path)
    path.write_bytes(b"")
    return path


def text_as_jpg(path: str | Path) -> Path:
    """A text file with an image suffix."""
    path = _target(path)
    path.write_text("this is not a picture\n" * 20)
    return path


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_bomb(path: str | Path, side: int = 30000) -> Path:
    """A tiny PNG (a few KB) whose header declares side x side 8-bit grey pixels.

    Only the first rows of pixel data are present, so nothing big is built here.
    """
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * ((side + 1) * 4), 9)
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b""))
    path = _target(path)
    path.write_bytes(data)
    return path


def _halves(size: tuple[int, int]) -> Image.Image:
    """Left half red, right half blue: makes rotations and flips visible."""
    image = Image.new("RGB", size, (255, 0, 0))
    image.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    return image


def exif_rotated_jpeg(path: str | Path, orientation: int = 6,
                      size: tuple[int, int] = (64, 32)) -> Path:
    """A JPEG of ``size`` (stored pixels) with an EXIF Orientation tag.

    Stored pixels: left half red, right half blue.
    """
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = orientation
    return _save(_halves(size), path, "JPEG", exif=exif.tobytes())


def broken_exif_jpeg(path: str | Path, size: tuple[int, int] = (64, 32)) -> Path:
    """A JPEG with Orientation=6 and an XResolution tag of the wrong (ASCII) type.

    Pillow's ImageOps.exif_transpose raises TypeError on it.
    """
    entries = [(0x0112, 3, 1, b"\x00\x06\x00\x00"), (0x011A, 2, 4, b"abc\x00")]
    tiff_block = b"MM\x00\x2a" + struct.pack(">IH", 8, len(entries))
    for tag, kind, count, value in entries:
        tiff_block += struct.pack(">HHI", tag, kind, count) + value
    tiff_block += b"\x00\x00\x00\x00"
    return _save(_halves(size), path, "JPEG", exif=b"Exif\x00\x00" + tiff_block)


def cmyk_jpeg(path: str | Path, size: tuple[int, int] = (40, 30)) -> Path:
    """A CMYK JPEG."""
    return _save(photo_image(1, size).convert("CMYK"), path, "JPEG")


def palette_alpha_png(path: str | Path, size: tuple[int, int] = (20, 10)) -> Path:
    """A P-mode PNG whose palette index 0 is transparent; pixel (0, 0) uses it."""
    image = Image.new("P", size, 1)
    image.putpalette([0, 0, 0, 200, 30, 30] + [0] * (254 * 3))
    image.paste(0, (0, 0, size[0] // 2, size[1]))  # left half transparent (black)
    return _save(image, path, "PNG", transparency=0)


def la_png(path: str | Path, size: tuple[int, int] = (20, 10)) -> Path:
    """A grey+alpha PNG: left half fully transparent black, right half opaque grey 100."""
    image = Image.new("LA", size, (100, 255))
    image.paste((0, 0), (0, 0, size[0] // 2, size[1]))
    return _save(image, path, "PNG")


def rgba_png(path: str | Path, size: tuple[int, int] = (20, 10)) -> Path:
    """An RGBA PNG: left half fully transparent black, right half opaque green."""
    image = Image.new("RGBA", size, (0, 200, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    return _save(image, path, "PNG")


def png16(path: str | Path, size: tuple[int, int] = (64, 8)) -> Path:
    """A 16-bit grey (I;16) PNG: a left-to-right gradient 0..65535."""
    row = np.linspace(0, 65535, size[0]).round().astype(np.uint16)
    return _save(Image.fromarray(np.tile(row, (size[1], 1))), path, "PNG")


def animated_gif(path: str | Path, size: tuple[int, int] = (16, 16)) -> Path:
    """A 3-frame GIF: red, then green, then blue."""
    frames = [Image.new("RGB", size, c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return _save(frames[0], path, "GIF", save_all=True, append_images=frames[1:],
                 duration=100, loop=0)


def mpo(path: str | Path, size: tuple[int, int] = (16, 8)) -> Path:
    """A 2-frame MPO (how many phones write JPEGs): red, then blue."""
    frames = [Image.new("RGB", size, (255, 0, 0)), Image.new("RGB", size, (0, 0, 255))]
    return _save(frames[0], path, "MPO", save_all=True, append_images=frames[1:])


def webp(path: str | Path, seed: int = 2, size: tuple[int, int] = (64, 48)) -> Path:
    """A WebP picture."""
    return photo(path, seed, size, "WEBP")


def bmp(path: str | Path, seed: int = 3, size: tuple[int, int] = (64, 48)) -> Path:
    """A BMP picture."""
    return photo(path, seed, size, "BMP")


def tiff(path: str | Path, seed: int = 4, size: tuple[int, int] = (64, 48)) -> Path:
    """A TIFF picture."""
    return photo(path, seed, size, "TIFF")


def big_jpeg(path: str | Path, size: tuple[int, int] = (4000, 3000)) -> Path:
    """A large JPEG (built by upscaling a small picture, so it is quick to make)."""
    image = photo_image(5, (80, 60)).resize(size, Image.Resampling.BILINEAR)
    return _save(image, path, "JPEG", quality=75)


def truncated_webp(path: str | Path) -> Path:
    """A WebP cut off in the middle of its bitstream."""
    return _truncated(path, "WEBP", 0.6)


def truncated_gif(path: str | Path) -> Path:
    """A GIF cut off in the middle of its LZW data."""
    return _truncated(path, "GIF", 0.6)


def jpeg_bomb(path: str | Path, width: int = 65000, height: int = 65000) -> Path:
    """A tiny JPEG whose frame header (SOF0) declares ``width`` x ``height`` pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path = _target(path)
    path.write_bytes(bytes(data))
    return path


def big_png(path: str | Path, size: tuple[int, int] = (9000, 9000)) -> Path:
    """A large but legal grey PNG (a top-to-bottom gradient; fast to write, about 100 KB)."""
    image = Image.linear_gradient("L").resize(size, Image.Resampling.NEAREST)
    return _save(image, path, "PNG", compress_level=1)


def animated_webp(path: str | Path, size: tuple[int, int] = (16, 16)) -> Path:
    """A 3-frame WebP: red, then green, then blue (lossless, so the colours are exact)."""
    frames = [Image.new("RGB", size, c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return _save(frames[0], path, "WEBP", save_all=True, append_images=frames[1:], duration=100,
                 loop=0, lossless=True)


def icc_jpeg(path: str | Path, profile: bytes | None = None, size: tuple[int, int] = (40, 30)) -> Path:
    """A JPEG carrying an ICC profile: sRGB by default, or the given (possibly garbage) bytes."""
    if profile is None:
        from PIL import ImageCms

        profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return _save(photo_image(11, size), path, "JPEG", icc_profile=profile)
