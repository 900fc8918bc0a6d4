"""Safe image decoding: the one place where untrusted files become pixels.

:func:`safe_open` opens a path, bytes or a binary file object and returns a fully
loaded RGB image, or raises :class:`~searchengine.errors.ImageDecodeError`. It

* accepts only the formats in :func:`allowed_formats` (no PSD, ICO, EPS, ...),
* refuses images whose header declares more than ``max_pixels`` pixels before any
  pixel is decoded (Pillow's own decompression-bomb limit, twice
  ``Image.MAX_IMAGE_PIXELS``, still applies above that),
* refuses truncated files (``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set),
* can decode big JPEGs at a reduced scale (``draft_size``),
* applies the EXIF orientation and turns every mode into 8-bit RGB
  (transparency composited over white, 16/32-bit and float data rescaled).

No global Pillow setting is changed. HEIF/HEIC support is used when the optional
``pillow_heif`` package is installed; its opener is registered on first use.
"""

from __future__ import annotations

import datetime
import functools
import io
import logging
import os
import re
import stat
import struct
import warnings
import zlib
from typing import BinaryIO, Callable, TypeVar, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from searchengine.errors import ImageDecodeError

__all__ = [
    "check_image",
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "allowed_formats",
    "image_extensions",
    "open_regular",
    "safe_open",
    "to_rgb",
]

logger = logging.getLogger(__name__)

#: File suffixes the scanner treats as images (HEIF ones are added by image_extensions()).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)
_HEIF_EXTENSIONS: frozenset[str] = frozenset({".heic", ".heif"})

#: Pillow format names safe_open accepts, in the order they are tried. MPO is how
#: Pillow opens many phone JPEGs. "HEIF" is added by allowed_formats() when available.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")

DEFAULT_MAX_PIXELS = 100_000_000

ImageSource = Union[str, "os.PathLike[str]", bytes, BinaryIO]

# What Pillow's decoders raise on corrupt data (Image.open itself swallows SyntaxError,
# IndexError, TypeError and struct.error from plugins; load() can let them through).
# UnidentifiedImageError is an OSError; DecompressionBombError is handled separately.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError,
    EOFError, struct.error, zlib.error,
)
# What ImageOps.exif_transpose raises on a malformed EXIF block (found by fuzzing:
# mostly while re-serialising the block, i.e. after the transpose itself).
_EXIF_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, KeyError, IndexError, AttributeError, SyntaxError,
    OSError, struct.error, ZeroDivisionError,
)
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
_INT16_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
_TRANSPARENCY_MODES = frozenset({"P", "L", "RGB"})  # modes whose info["transparency"] counts


@functools.cache
def _heif_support() -> bool:
    """Register pillow_heif's opener once, if the package is installed."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def image_extensions() -> frozenset[str]:
    """File suffixes (lower case, with the dot) that safe_open can decode here."""
    return IMAGE_EXTENSIONS | _HEIF_EXTENSIONS if _heif_support() else IMAGE_EXTENSIONS


def allowed_formats() -> tuple[str, ...]:
    """Pillow format names safe_open accepts here (HEIF when pillow_heif is installed)."""
    return ALLOWED_FORMATS + ("HEIF",) if _heif_support() else ALLOWED_FORMATS


def _open_formats() -> tuple[str, ...]:
    """The allowed formats Pillow can be asked for by name (MPO opens through JPEG)."""
    Image.init()  # loads every plugin once; a no-op afterwards
    return tuple(name for name in allowed_formats() if name in Image.OPEN)


_SPECIAL_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file, or raise ImageDecodeError.

    The file is opened without blocking and checked through its descriptor, so a named pipe
    (or a file swapped for one after a scan) is refused instead of blocking the reader forever,
    and there is no gap between the check and the open.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "a special file")
            raise ImageDecodeError(f"cannot read file: it is {kind}, not a regular file")
        return os.fdopen(fd, "rb")  # O_NONBLOCK does not change reads of a regular file
    except BaseException:
        os.close(fd)
        raise


def safe_open(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode ``source`` into a fully loaded RGB image, or raise ImageDecodeError.

    ``source`` is a path, the file's bytes, or a binary file object (read from its
    start and left open). ``max_pixels`` caps width*height as declared in the header.
    With ``draft_size``, JPEGs are decoded at the largest 1/2, 1/4 or 1/8 scale whose
    sides both stay >= draft_size (the result is not resized further). Pillow's own
    decompression-bomb limit (2 x ``Image.MAX_IMAGE_PIXELS``) applies even when
    ``max_pixels`` is set higher.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(source), max_pixels, draft_size)
    if isinstance(source, (str, os.PathLike)):
        with open_regular(source) as fp:
            return _decode(fp, max_pixels, draft_size)
    return _decode(source, max_pixels, draft_size)


_T = TypeVar("_T")


def check_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """The (width, height) a file's header declares, or ImageDecodeError when it is not an image of an
    allowed format within ``max_pixels``: a cheap check (no pixel is decoded) to run before a model
    loads. :func:`safe_open` still decodes it fully, and may still find the data truncated."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _opened(io.BytesIO(source), max_pixels, lambda image: image.size)
    if isinstance(source, (str, os.PathLike)):
        with open_regular(source) as fp:
            return _opened(fp, max_pixels, lambda image: image.size)
    return _opened(source, max_pixels, lambda image: image.size)


def _decode(fp: BinaryIO, max_pixels: int, draft_size: int | None) -> Image.Image:
    return _opened(fp, max_pixels, lambda image: _loaded(image, draft_size))


def _opened(fp: BinaryIO, max_pixels: int, then: Callable[[Image.Image], _T]) -> _T:
    """Open ``fp`` as an image of an allowed format, check its declared size, and return ``then(image)``;
    every failure becomes ImageDecodeError."""
    try:
        fp.seek(0)
    except (AttributeError, OSError):  # a pipe or socket: Pillow needs to seek
        fp = io.BytesIO(fp.read())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        try:
            if not fp.read(1):
                raise ImageDecodeError("empty file")
            fp.seek(0)
            image = Image.open(fp, formats=_open_formats())
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image too large: {width}x{height} pixels exceeds the "
                    f"{max_pixels:,} pixel limit"
                )
            return then(image)
        except UnidentifiedImageError as exc:
            raise ImageDecodeError("not an image (or an unsupported format)") from exc
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError(f"image too large: {exc}") from exc
        except _DECODE_ERRORS as exc:
            raise ImageDecodeError(f"cannot decode image: {exc}") from exc


def _loaded(image: Image.Image, draft_size: int | None) -> Image.Image:
    width, height = image.size
    if draft_size is not None and image.format in _DRAFT_FORMATS:
        image.draft("RGB", (draft_size, draft_size))
    image.load()  # first frame only; raises on truncated data
    drafted = image.size
    _apply_exif_orientation(image)
    rgb = to_rgb(image)
    # the file's own size (as displayed), even when a draft decoded it smaller
    rgb.info["original_size"] = (height, width) if image.size != drafted else (width, height)
    return rgb


def _apply_exif_orientation(image: Image.Image) -> None:
    """Rotate/flip in place per the EXIF Orientation tag; a broken EXIF block is ignored."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except _EXIF_ERRORS as exc:
        logger.debug("ignoring malformed EXIF data: %s", exc)


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an 8-bit RGB version of a loaded image of any Pillow mode.

    Alpha and palette/colour-key transparency are composited over white; 16-bit,
    32-bit integer and float grey levels are rescaled to 0..255. An RGB image without
    transparency is returned as is.
    """
    mode = image.mode
    if mode in _INT16_MODES or mode in ("I", "F"):
        return _grey_to_8bit(image).convert("RGB")
    if mode == "La":  # premultiplied; Pillow converts it only to LA
        image, mode = image.convert("LA"), "LA"
    if mode in _ALPHA_MODES or (
        mode in _TRANSPARENCY_MODES and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageDecodeError(f"unsupported image mode {mode!r}") from exc


def _grey_to_8bit(image: Image.Image) -> Image.Image:
    """Scale I;16*, I (32-bit int) or F (float) grey levels to an 8-bit L image."""
    data = np.asarray(image)
    if image.mode in _INT16_MODES:
        scaled = (data.astype(np.uint32) + 128) // 257  # 0..65535 -> 0..255
    elif image.mode == "I":
        if data.max(initial=0) <= 255:
            scaled = np.clip(data, 0, 255)
        else:
            scaled = (np.clip(data, 0, 65535).astype(np.uint32) + 128) // 257
    else:  # "F": [0, 1] floats or [0, 255]-ish values
        finite = np.isfinite(data)
        top = 1.0 if data[finite].max(initial=0.0) <= 1.0 else 255.0
        clipped = np.clip(np.where(finite, data, 0.0), 0.0, top)
        scaled = np.rint(clipped * (255.0 / top))
    return Image.fromarray(scaled.astype(np.uint8))


_EXIF_IFD = 0x8769
_DATE_TAGS = (0x9003, 0x9004)  # DateTimeOriginal, DateTimeDigitized
_EXIF_DATE = re.compile(r"\s*(\d{4})[:\-/](\d{2})[:\-/](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


def taken_at(source: bytes | Image.Image) -> str | None:
    """When the photo was taken, per EXIF, as ``YYYY-MM-DDTHH:MM:SS``; None if unknown.

    DateTimeOriginal, else DateTimeDigitized, from the Exif IFD (or, as some writers put
    them, from IFD0); subseconds and time zone are dropped. Bytes are only opened, in the
    formats safe_open allows (headers parsed, no pixel decoded). Never raises: corrupt
    input or a malformed date gives None.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(source, Image.Image):
                return _exif_date(source.getexif())
            with Image.open(io.BytesIO(bytes(source)), formats=_open_formats()) as image:
                # the base method reads header data only (PngImageFile.getexif decodes pixels)
                return _exif_date(Image.Image.getexif(image))
    except Exception as exc:  # noqa: BLE001 - any parser failure means "no date"
        logger.debug("no EXIF date: %s", exc)
        return None


def _exif_date(exif: Image.Exif) -> str | None:
    ifds = (exif.get_ifd(_EXIF_IFD), exif)
    for tag in _DATE_TAGS:
        for tags in ifds:
            value = tags.get(tag)
            if isinstance(value, bytes):
                value = value.decode("ascii", "replace")
            match = _EXIF_DATE.match(value) if isinstance(value, str) else None
            if match is None:
                continue
            try:
                return datetime.datetime(*map(int, match.groups())).isoformat(timespec="seconds")
            except ValueError:
                continue
    return None
