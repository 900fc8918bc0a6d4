#!/usr/bin/env python3
"""Fetch offline image data sets that ship as Debian packages.

Every data set is a list of Debian packages plus a *prepare* step.  Nothing
needs root: each package is fetched with ``apt-get download`` (which only
writes the ``.deb`` into the current folder) and unpacked with ``dpkg -x``
(which extracts the files without installing anything).  The prepare step then
builds a plain folder of images out of the unpacked files.

Layout of the cache folder (``data/cache/`` beside this script, git-ignored;
override with ``--cache DIR`` or the ``SEARCHENGINE_DATA_CACHE`` variable)::

    CACHE/debs/PKG_VERSION_all.deb   downloaded packages (reused)
    CACHE/pkgs/PKG/...               raw ``dpkg -x`` extraction of each package
    CACHE/NAME/...                   the prepared data set (hard links into pkgs/)

Runs are idempotent: downloaded ``.deb`` files, extractions and prepared
folders are reused; ``--force`` re-extracts and re-prepares (it never
re-downloads).  The data is never committed: each package keeps its own
licence, see ``CACHE/pkgs/PKG/usr/share/doc/PKG/copyright``.

Usage::

    python data/fetch.py --list
    python data/fetch.py wallpapers opencv-samples tuxpaint fashion-mnist openclipart
    python data/fetch.py --fashion-train fashion-mnist   # also the 60,000 train images

For each data set one line goes to stdout: ``NAME: N images in PATH``.
Progress goes to stderr (silence it with ``-q``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("fetch")

ENV_CACHE = "SEARCHENGINE_DATA_CACHE"
DEFAULT_CACHE = Path(__file__).resolve().parent / "cache"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
STAMP = ".fetch-stamp.json"
# Bump when the output of every prepare function changes (the folder layout,
# the stamp), so old folders get rebuilt; for one data set bump its ``version``.
PREPARE_VERSION = 1


class FetchError(Exception):
    """A failure worth a one-line message rather than a traceback."""


# --------------------------------------------------------------------------
# apt-get / dpkg
# --------------------------------------------------------------------------


def _require_tools() -> None:
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise FetchError(
                f"{tool} not found: fetching data sets needs a Debian/Ubuntu system "
                "with apt-get and dpkg"
            )


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    log.debug("running %s", " ".join(cmd))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def _unknown_package(stderr: str) -> bool:
    return any(
        marker in stderr
        for marker in ("Unable to locate package", "has no installation candidate",
                       "Can't select candidate version")
    )


def _apt_get_download(package: str, dest: Path) -> Path:
    """Run ``apt-get download PACKAGE`` in an empty folder under *dest*.

    Downloads into a scratch folder first so that an interrupted download
    never leaves a truncated ``.deb`` where the next run would reuse it.
    """
    with tempfile.TemporaryDirectory(prefix=f".{package}-", dir=dest) as scratch:
        proc = _run(["apt-get", "download", package], cwd=Path(scratch))
        if proc.returncode != 0 and _unknown_package(proc.stderr):
            log.warning("apt does not know package %s: running apt-get update", package)
            update = _run(["apt-get", "update"])
            if update.returncode != 0:
                raise FetchError(
                    f"apt-get update failed (run it as root, then retry): "
                    f"{_last_error(update.stderr)}"
                )
            proc = _run(["apt-get", "download", package], cwd=Path(scratch))
        if proc.returncode != 0:
            raise FetchError(f"apt-get download {package} failed: {_last_error(proc.stderr)}")
        debs = list(Path(scratch).glob("*.deb"))
        if len(debs) != 1:
            raise FetchError(f"apt-get download {package} produced {len(debs)} .deb files")
        target = dest / debs[0].name
        debs[0].replace(target)
    return target


def _last_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("E:")]
    return (lines or stderr.strip().splitlines() or ["(no message)"])[-1]


def download(package: str, cache: Path) -> Path:
    """Return the cached ``.deb`` of *package*, downloading it if missing."""
    debs_dir = cache / "debs"
    debs_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(debs_dir.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
    if existing:
        return existing[-1]
    log.info("downloading %s", package)
    return _apt_get_download(package, debs_dir)


def extract(package: str, deb: Path, cache: Path, force: bool = False) -> Path:
    """Unpack *deb* into ``CACHE/pkgs/PACKAGE`` with ``dpkg -x``; return that folder."""
    root = cache / "pkgs" / package
    stamp = root / ".deb"
    if not force and stamp.is_file() and stamp.read_text().strip() == deb.name:
        return root
    log.info("extracting %s", deb.name)
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=root.parent))
    try:
        proc = _run(["dpkg", "-x", str(deb), str(scratch)])
        if proc.returncode != 0:
            raise FetchError(f"dpkg -x {deb.name} failed: {_last_error(proc.stderr)}")
        (scratch / ".deb").write_text(deb.name + "\n")
        _replace_dir(scratch, root)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return root


def _replace_dir(new: Path, old: Path) -> None:
    new.chmod(0o755)  # mkdtemp makes it private
    if old.exists():
        shutil.rmtree(old)
    new.rename(old)


# --------------------------------------------------------------------------
# Small file helpers
# --------------------------------------------------------------------------


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link *src* to *dst* (same file system), else copy it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def iter_images(folder: Path, recursive: bool = True) -> Iterator[Path]:
    """Yield the jpg/png files under *folder*, sorted, skipping symlinks."""
    paths = folder.rglob("*") if recursive else folder.glob("*")
    for path in sorted(paths):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not path.is_symlink():
            yield path


def image_size(path: Path) -> tuple[int, int] | None:
    """Return ``(width, height)`` read from a PNG or JPEG header, or None."""
    with path.open("rb") as f:
        head = f.read(26)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            return width, height
        if head[:2] != b"\xff\xd8":
            return None
        f.seek(2)
        while True:
            marker = f.read(2)
            if len(marker) < 2 or marker[0] != 0xFF:
                return None
            while marker[1] == 0xFF:  # fill bytes
                marker = marker[1:] + f.read(1)
            code = marker[1]
            if code in (0xD8, 0x01) or 0xD0 <= code <= 0xD7:  # no length field
                continue
            (length,) = struct.unpack(">H", f.read(2))
            # SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC)
            if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">xHH", f.read(5))
                return width, height
            f.seek(length - 2, os.SEEK_CUR)


def _largest(paths: Iterable[Path]) -> Path:
    """The image with the most pixels (ties: the bigger file)."""
    def key(path: Path) -> tuple[int, int]:
        size = image_size(path)
        return (size[0] * size[1] if size else 0, path.stat().st_size)
    return max(paths, key=key)


# --------------------------------------------------------------------------
# Prepare functions: (package roots, output folder) -> None
# --------------------------------------------------------------------------

PackageRoots = dict[str, Path]

_RESOLUTION_SUFFIX = re.compile(r"_\d+x\d+$")


def prepare_wallpapers(roots: PackageRoots, out: Path) -> None:
    """One file per wallpaper (its largest variant), under ``mate/`` and ``plasma/``.

    * mate-backgrounds: ``usr/share/backgrounds/mate/CATEGORY/NAME[_WxH].ext``;
      variants of one picture differ only by the ``_WxH`` suffix.
    * plasma-workspace-wallpapers: ``usr/share/wallpapers/NAME/contents/images/WxH.ext``
      (``images_dark/`` and ``screenshot.*`` previews are left out).

    Every resolution stays available in ``CACHE/pkgs/``.
    """
    mate = roots["mate-backgrounds"] / "usr/share/backgrounds/mate"
    groups: dict[Path, list[Path]] = {}
    for image in iter_images(mate):
        name = _RESOLUTION_SUFFIX.sub("", image.stem)
        groups.setdefault(image.parent.relative_to(mate) / name, []).append(image)
    for rel, variants in groups.items():
        best = _largest(variants)
        link_or_copy(best, out / "mate" / rel.with_suffix(best.suffix.lower()))

    plasma = roots["plasma-workspace-wallpapers"] / "usr/share/wallpapers"
    for folder in sorted(p for p in plasma.iterdir() if p.is_dir()):
        variants = list(iter_images(folder / "contents" / "images"))
        if variants:
            best = _largest(variants)
            link_or_copy(best, out / "plasma" / (folder.name + best.suffix.lower()))
    for image in iter_images(plasma, recursive=False):  # single-file wallpapers
        link_or_copy(image, out / "plasma" / image.name)


def prepare_opencv_samples(roots: PackageRoots, out: Path) -> None:
    """The sample images of OpenCV's examples (``examples/data/*.jpg|png``), flat."""
    data = roots["opencv-doc"] / "usr/share/doc/opencv-doc/examples/data"
    for image in iter_images(data, recursive=False):
        link_or_copy(image, out / image.name)


def read_stamp_captions(txt: Path) -> list[str]:
    """Captions of a Tux Paint stamp description file.

    The first line is the English description; every other line is
    ``LOCALE.utf8=translation``.  Returns English first, then the distinct
    non-empty translations in file order.
    """
    lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    captions: list[str] = []
    for number, line in enumerate(lines):
        text = line if number == 0 else line.partition("=")[2]
        text = text.strip()
        if text and text not in captions:
            captions.append(text)
    return captions


TUXPAINT_STAMPS = "usr/share/tuxpaint/stamps"  # in tuxpaint-stamps-default


def tuxpaint_records(stamps: Path, warn: bool = True) -> list[dict[str, object]]:
    """The ``manifest.jsonl`` records of the stamps under *stamps* (the
    package's ``usr/share/tuxpaint/stamps``), ``image`` relative to it."""
    records: list[dict[str, object]] = []
    for image in iter_images(stamps):
        if image.stem.endswith("_mirror"):
            continue
        rel = image.relative_to(stamps)
        txt = image.with_suffix(".txt")
        captions = read_stamp_captions(txt) if txt.is_file() else []
        if not captions and warn:
            log.warning("no description for %s", rel)
        records.append({"image": rel.as_posix(), "captions": captions, "object": image.stem,
                        "category": rel.parent.as_posix()})
    return records


def prepare_tuxpaint(roots: PackageRoots, out: Path) -> None:
    """Tux Paint stamps (png) with their captions in ``manifest.jsonl``.

    Keeps the category folders (``animals/mammals/lion.png``), since a few
    stems occur in several categories.  ``*_mirror.png`` (pre-mirrored copies
    of another stamp) are skipped.  Also writes the object-disjoint
    ``train.jsonl`` / ``test.jsonl`` split (see :func:`split_tuxpaint`).
    """
    stamps = roots["tuxpaint-stamps-default"] / TUXPAINT_STAMPS
    records = tuxpaint_records(stamps)
    for record in records:
        link_or_copy(stamps / str(record["image"]), out / str(record["image"]))
    write_jsonl(out / "manifest.jsonl", records)
    train, test = split_tuxpaint(records)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    log.info("tuxpaint split: train %d images (%d groups), test %d images (%d groups), "
             "%d letter stamps in neither", len(train), len({r["group"] for r in train}),
             len(test), len({r["group"] for r in test}),
             len(records) - len(train) - len(test))


def write_jsonl(path: Path, records: Iterable[Mapping[str, object]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


TUXPAINT_SPLIT_SEED = 20261122
TUXPAINT_TEST_FRACTION = 0.2
TUXPAINT_LETTER_CATEGORY = "symbols/alphabets"
_NUMBER_SUFFIX = re.compile(r"[-_]?\d+$")


def tuxpaint_group(record: Mapping[str, object]) -> str:
    """The split unit of a Tux Paint stamp: its stem, lower-cased, without a
    trailing number (``lion`` and ``lion-2``, ``flower1``…``flower10``,
    ``yen001``…``yen500`` each form one group).  A stem that is only a number
    (``0``…``9``, ``747``) stays its own group.
    """
    stem = str(record["object"]).lower()
    return _NUMBER_SUFFIX.sub("", stem) or stem


def is_tuxpaint_letter(record: Mapping[str, object]) -> bool:
    category = str(record["category"])
    return category == TUXPAINT_LETTER_CATEGORY or category.startswith(
        TUXPAINT_LETTER_CATEGORY + "/")


def _caption_key(record: Mapping[str, object]) -> str:
    """The English caption, lower-cased, without punctuation or a leading article."""
    captions = record.get("captions") or [""]
    words = re.findall(r"[a-z0-9]+", str(captions[0]).lower())  # type: ignore[index]
    while words and words[0] in ("a", "an", "the", "some"):
        words.pop(0)
    return " ".join(words)


def tuxpaint_groups(records: list[dict[str, object]]) -> dict[int, str]:
    """Split units: stamps are joined when :func:`tuxpaint_group` is equal OR their English
    captions are (``heron_greatblue``/``heron_greatblue_flying``, ``firetruck``/``fire_engine``,
    ``b_6_pawn``/``w_6_pawn``): such variants are one object and never straddle the split.
    Returns record index -> group name (the smallest member key)."""
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for keyer in (tuxpaint_group, _caption_key):
        first: dict[str, int] = {}
        for i, record in enumerate(records):
            key = keyer(record)
            if key:
                j = first.setdefault(key, i)
                parent[find(i)] = find(j)
    names: dict[int, str] = {}
    for i, record in enumerate(records):
        root = find(i)
        names[root] = min(names.get(root, tuxpaint_group(record)), tuxpaint_group(record))
    return {i: names[find(i)] for i in range(len(records))}


def split_tuxpaint(records: list[dict[str, object]],
                   seed: int = TUXPAINT_SPLIT_SEED,
                   test_fraction: float = TUXPAINT_TEST_FRACTION,
                   ) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Deterministic object-disjoint train/test split of the manifest records.

    Alphabet stamps (``symbols/alphabets/...``: letters and ASL hand signs)
    are in neither part.  The other records are grouped by
    :func:`tuxpaint_groups` (same stem without a trailing number, or the same
    English caption), so that variants of one object land on the same side.
    The sorted group names are shuffled with ``random.Random(seed)`` and the
    first ``round(test_fraction * groups)`` go to test.  Both lists keep
    manifest order, and each record gets its ``group``.
    """
    objects = [r for r in records if not is_tuxpaint_letter(r)]
    group_of = tuxpaint_groups(objects)
    groups = sorted(set(group_of.values()))
    random.Random(seed).shuffle(groups)
    test_groups = set(groups[:round(test_fraction * len(groups))])
    train, test = [], []
    for i, record in enumerate(objects):
        record = dict(record, group=group_of[i])
        (test if group_of[i] in test_groups else train).append(record)
    return train, test


# Fashion-MNIST -------------------------------------------------------------

# (folder name, zero-shot prompt label) by class index, from the upstream README.
FASHION_CLASSES = (
    ("tshirt_top", "t-shirt or top"),
    ("trouser", "trouser"),
    ("pullover", "pullover"),
    ("dress", "dress"),
    ("coat", "coat"),
    ("sandal", "sandal"),
    ("shirt", "shirt"),
    ("sneaker", "sneaker"),
    ("bag", "bag"),
    ("ankle_boot", "ankle boot"),
)


def _open_maybe_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def read_idx(path: Path) -> tuple[tuple[int, ...], bytes]:
    """Read an unsigned-byte IDX file (gzipped or not): ``(shape, raw bytes)``."""
    data = _open_maybe_gzip(path)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise FetchError(f"{path.name}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    expected = 1
    for n in shape:
        expected *= n
    if len(body) != expected:
        raise FetchError(f"{path.name}: {len(body)} bytes of data, shape {shape} needs {expected}")
    return shape, body


def png_gray(width: int, height: int, pixels: bytes) -> bytes:
    """Encode 8-bit grayscale *pixels* (row-major) as a PNG file."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + tag + body
                + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF))
    rows = b"".join(b"\0" + pixels[y * width:(y + 1) * width] for y in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def _find_idx(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / (name + ".gz")):
        if candidate.is_file():
            return candidate
    raise FetchError(f"{name}[.gz] not found in {folder}")


def prepare_fashion_split(folder: Path, prefix: str, out: Path) -> int:
    """Write one Fashion-MNIST split (``t10k`` or ``train``) as PNGs under *out*."""
    shape, pixels = read_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte"))
    (count,), labels = read_idx(_find_idx(folder, f"{prefix}-labels-idx1-ubyte"))
    if len(shape) != 3 or shape[0] != count:
        raise FetchError(f"fashion-mnist {prefix}: {shape[0]} images but {count} labels")
    _, height, width = shape
    size = height * width
    digits = len(str(count - 1))
    records = []
    for index in range(count):
        label = labels[index]
        if label >= len(FASHION_CLASSES):
            raise FetchError(f"fashion-mnist {prefix}: label {label} out of range")
        folder_name = FASHION_CLASSES[label][0]
        rel = f"{folder_name}/{index:0{digits}d}.png"
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_gray(width, height, pixels[index * size:(index + 1) * size]))
        records.append({"image": rel, "label": folder_name, "index": index})
    write_jsonl(out / "manifest.jsonl", records)
    (out / "labels.json").write_text(
        json.dumps(dict(FASHION_CLASSES), indent=2) + "\n", encoding="utf-8")
    return count


def prepare_fashion_mnist(roots: PackageRoots, out: Path, train: bool = False) -> None:
    """Fashion-MNIST as 28x28 grayscale PNGs: ``test/CLASS/INDEX.png`` (10,000)
    and, with *train*, ``train/CLASS/INDEX.png`` (60,000).

    Each split folder has ``manifest.jsonl`` (``{"image", "label", "index"}``,
    ``index`` = position in the IDX file) and ``labels.json`` (folder name ->
    prompt text, e.g. ``"tshirt_top": "t-shirt or top"``).  The pixels are the
    raw ones: light garment on a black background.
    """
    folder = roots["dataset-fashion-mnist"] / "usr/share/datasets/fashion-mnist"
    for prefix, split, wanted in (("t10k", "test", True), ("train", "train", train)):
        if wanted:
            count = prepare_fashion_split(folder, prefix, out / split)
            log.info("fashion-mnist %s: %d images", split, count)


# Open Clip Art Library -------------------------------------------------------

OPENCLIPART_MIN_SIDE = 32
OPENCLIPART_MAX_SIDE = 4096
OPENCLIPART_MAX_IMAGES = 20_000
OPENCLIPART_SAMPLE_SEED = 20261122
# A (cleaned) title shared by more differently named drawings than this is a
# collection name ("gramastar", "Lemon SVG theme", "card"...), not a
# description of the image.  Numbered variants of one drawing
# (``lightning_jon_phillips_01``…``_05``) count once.
OPENCLIPART_GENERIC_TITLE_COUNT = 3
_DC = "{http://purl.org/dc/elements/1.1/}"
_CC = "{http://web.resource.org/cc/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_CLIPART_BY = re.compile(r"^clipart by .*? - ", re.IGNORECASE)
# Words that mark a title as the name of a collection, not of one image.
_COLLECTION_WORDS = re.compile(r"\b(collection|cliparts?|theme|iconset|icons)\b", re.IGNORECASE)
_NOISE_KEYWORD = re.compile(r"^(hash\b.*|.)?$")  # blank, 1 character, "hash", "hash(0x8561edc)"


def _text(element: ET.Element | None) -> str:
    if element is None or element.text is None:
        return ""
    return " ".join(element.text.split())


def read_svg_metadata(svg: Path) -> tuple[str, list[str], str]:
    """``(title, keywords, creator)`` from an SVG's Dublin Core metadata
    (``dc:title``, ``dc:subject/rdf:Bag/rdf:li``, ``dc:creator``).  Empty
    values when the file is missing, unreadable or has none."""
    try:
        root = ET.parse(svg).getroot()
    except (OSError, ET.ParseError) as exc:
        log.debug("no metadata from %s: %s", svg, exc)
        return "", [], ""
    work = root.find(f".//{_CC}Work")
    if work is None:
        return "", [], ""
    title = _text(work.find(f"{_DC}title"))
    keywords = [_text(li) for li in work.iterfind(f"{_DC}subject/{_RDF}Bag/{_RDF}li")]
    creator = _text(work.find(f"{_DC}creator/{_CC}Agent/{_DC}title"))
    return title, keywords, creator


def clean_clipart_title(title: str) -> str:
    """``"Clipart by Nicu Buculei - piggybank"`` -> ``"piggybank"``; ``_`` -> space."""
    title = _CLIPART_BY.sub("", title).replace("_", " ")
    return " ".join(title.split())


def _loose(text: str) -> str:
    """Lower case, ``_``/``-`` as spaces: for comparing names."""
    return " ".join(t for t in re.split(r"[_\-\s]+", text.lower()) if t)


def is_specific_title(title: str, stem: str, drawings: int) -> bool:
    """Whether an SVG title describes this image rather than its collection.

    Not when it is empty; when it names a collection (``"... Icon
    Collection"``, ``"Lemon SVG theme"``, ``"Homes Clipart"``); when it is
    ``"Clipart by AUTHOR - NAME"`` with another file's NAME (Nicu Buculei's
    sets carry one title for the whole set); or when *drawings* (the number of
    differently named files that share it) is over
    ``OPENCLIPART_GENERIC_TITLE_COUNT`` (``"gramastar"``, ``"card"``).
    """
    cleaned = clean_clipart_title(title)
    if not cleaned or _COLLECTION_WORDS.search(cleaned):
        return False
    if _CLIPART_BY.match(title) and _loose(cleaned) != _loose(stem):
        return False
    return drawings <= OPENCLIPART_GENERIC_TITLE_COUNT


def name_from_file(stem: str, creator: str = "") -> str:
    """A caption made from a clip-art file name: ``"gattina_cat_architetto_f_01"``
    by Architetto Francesco Rollandin -> ``"gattina cat"``.

    Splits on ``_``/``-``, then drops trailing zero-padded numbers (``01``,
    ``001``; ``10`` in ``bordered_c_10`` stays) and trailing tokens that
    begin a word of the creator's name (the file names end with a truncated
    author name), always keeping the first token.
    """
    tokens = [t for t in re.split(r"[_\-\s]+", stem.lower()) if t]
    author = [w for w in re.split(r"\W+", creator.lower()) if w]
    while len(tokens) > 1 and (re.fullmatch(r"0\d+", tokens[-1])
                               or any(w.startswith(tokens[-1]) for w in author)):
        tokens.pop()
    return " ".join(tokens)


def clean_keywords(keywords: Iterable[str], creator: str, drop: Iterable[str] = ()) -> list[str]:
    """Keywords with ``_`` as spaces, without blank or 1-character ones,
    ``hash(0x...)`` junk, the creator's name, *drop* and duplicates."""
    seen = {creator.lower(), *(d.lower() for d in drop)}
    kept = []
    for keyword in keywords:
        keyword = " ".join(keyword.replace("_", " ").split())
        if not _NOISE_KEYWORD.match(keyword) and keyword.lower() not in seen:
            seen.add(keyword.lower())
            kept.append(keyword)
    return kept


# An openclipart image whose drawing signature has at least this cosine with
# the signature of a Tux Paint *test* stamp is the same drawing (Tux Paint took
# some of its stamps from Open Clip Art): it is left out, so that training on
# openclipart never sees a test image.
OPENCLIPART_TEST_OVERLAP_COSINE = 0.90
SIGNATURE_SIDE = 24  # signature: SIDE x SIDE grey pixels of the drawing's bounding box
SIGNATURE_INK = 250  # grey values below this (on white) are the drawing


def drawing_signature(path: Path) -> np.ndarray:
    """A small signature of a drawing that ignores its size, margins and transparency.

    The image is composited on white, converted to greyscale, cropped to the
    bounding box of its pixels darker than ``SIGNATURE_INK``, resized to
    ``SIGNATURE_SIDE`` x ``SIGNATURE_SIDE`` (bilinear), and the pixels are
    mean-removed and scaled to unit length, so that the dot product of two
    signatures is their cosine.  All zeros for a blank or unreadable image.
    Needs numpy and Pillow (imported here: the script is stdlib-only otherwise).
    """
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as opened:
            rgba = opened.convert("RGBA")
    except (OSError, ValueError) as exc:
        log.warning("no signature for %s: %s", path, exc)
        return np.zeros(SIGNATURE_SIDE ** 2)
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    white.alpha_composite(rgba)
    grey = white.convert("L")
    box = grey.point([255 if v < SIGNATURE_INK else 0 for v in range(256)]).getbbox()
    if box:
        grey = grey.crop(box)
    pixels = np.asarray(grey.resize((SIGNATURE_SIDE, SIGNATURE_SIDE), Image.BILINEAR),
                        dtype=np.float64).ravel()
    pixels -= pixels.mean()
    norm = float(np.linalg.norm(pixels))
    return pixels / norm if norm > 0 else pixels


def _signatures(paths: list[Path]) -> np.ndarray:
    """:func:`drawing_signature` of each path, one row each, in order (a few
    threads: Pillow decodes and resizes without the GIL)."""
    import numpy as np

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return np.stack(list(pool.map(drawing_signature, paths)))


def find_test_overlap(images: dict[str, Path], test: dict[str, Path],
                      threshold: float = OPENCLIPART_TEST_OVERLAP_COSINE,
                      ) -> list[dict[str, object]]:
    """The *images* whose drawing is also a *test* image.

    Both map a name (relative path) to a file.  An image overlaps when the
    cosine of its :func:`drawing_signature` with that of some test image is
    ``>= threshold``.  Returns ``{"image", "tuxpaint_test_image", "cosine"}``
    (the best-matching test image) for each, in the order of *images*.
    """
    if not images or not test:
        return []
    import numpy as np

    names, test_names = list(images), list(test)
    sigs = _signatures([images[n] for n in names])
    test_sigs = _signatures([test[n] for n in test_names])
    cosine = sigs @ test_sigs.T
    best = cosine.argmax(axis=1)
    best_cosine = cosine[np.arange(len(names)), best]
    return [{"image": names[i], "tuxpaint_test_image": test_names[int(best[i])],
             "cosine": round(float(best_cosine[i]), 4)}
            for i in np.flatnonzero(best_cosine >= threshold)]


def prepare_openclipart(roots: PackageRoots, out: Path) -> None:
    """Open Clip Art Library 0.18 PNGs with captions from the SVG metadata.

    * Images: ``openclipart-png``'s ``usr/share/openclipart/png/CATEGORY/NAME.png``
      (real files; the symlinked copies in other categories are skipped),
      keeping the category folders.  Images with a side under 32 or over 4096
      pixels are skipped; at most ``OPENCLIPART_MAX_IMAGES``, drawn with a
      fixed seed when there are more.
    * Captions: from the matching ``openclipart-svg`` file (same path, ``.svg``):
      ``dc:title`` and the ``dc:subject`` keywords.  Titles that name a
      collection rather than the image (see :func:`is_specific_title`) or are
      empty are replaced by a name made from the file name (see
      :func:`name_from_file`); ``name_source`` says which (``"title"`` or
      ``"file"``).  ``captions`` is ``[name, "name, keyword, keyword..."]``
      (the second one only when there are keywords).  The raw ``title`` and
      the cleaned ``keywords`` are kept too.
    * Test overlap: images that are the same drawing as a Tux Paint stamp of
      the **test** split (:func:`split_tuxpaint` of ``tuxpaint-stamps-default``,
      i.e. ``tuxpaint/test.jsonl``) are left out of the folder and of
      ``manifest.jsonl``, so training on openclipart never sees a test image
      (see :func:`find_test_overlap`).  They are listed in
      ``dropped_test_overlap.jsonl`` (``{"image", "tuxpaint_test_image",
      "cosine"}``).
    """
    png_root = roots["openclipart-png"] / "usr/share/openclipart/png"
    svg_root = roots["openclipart-svg"] / "usr/share/openclipart/svg"
    stamps = roots["tuxpaint-stamps-default"] / TUXPAINT_STAMPS
    images = []
    skipped = 0
    for image in iter_images(png_root):
        size = image_size(image)
        if (size is None or min(size) < OPENCLIPART_MIN_SIDE
                or max(size) > OPENCLIPART_MAX_SIDE):
            skipped += 1
            continue
        images.append(image)
    if len(images) > OPENCLIPART_MAX_IMAGES:
        images = sorted(random.Random(OPENCLIPART_SAMPLE_SEED).sample(
            images, OPENCLIPART_MAX_IMAGES))
    log.info("openclipart: %d images kept, %d skipped for size", len(images), skipped)

    metadata = {}
    for image in images:
        rel = image.relative_to(png_root)
        title, keywords, creator = read_svg_metadata((svg_root / rel).with_suffix(".svg"))
        metadata[rel] = (title, keywords, creator)
    drawings: dict[str, set[str]] = {}  # cleaned title -> file names without numbering
    for rel, (title, _, _) in metadata.items():
        base = _NUMBER_SUFFIX.sub("", rel.stem.lower()) or rel.stem.lower()
        drawings.setdefault(clean_clipart_title(title).lower(), set()).add(base)

    _, tuxpaint_test = split_tuxpaint(tuxpaint_records(stamps, warn=False))
    dropped = find_test_overlap({image.relative_to(png_root).as_posix(): image for image in images},
                                {str(r["image"]): stamps / str(r["image"]) for r in tuxpaint_test})
    write_jsonl(out / "dropped_test_overlap.jsonl", dropped)
    log.info("openclipart: %d images dropped, the same drawing as one of the %d Tux Paint test "
             "stamps (cosine >= %.2f, see dropped_test_overlap.jsonl)",
             len(dropped), len(tuxpaint_test), OPENCLIPART_TEST_OVERLAP_COSINE)
    leaked = {str(d["image"]) for d in dropped}

    records = []
    from_file = 0
    for image in images:
        rel = image.relative_to(png_root)
        if rel.as_posix() in leaked:
            continue
        title, keywords, creator = metadata[rel]
        name, source = clean_clipart_title(title), "title"
        if not is_specific_title(title, image.stem, len(drawings[name.lower()])):
            name, source = name_from_file(image.stem, creator), "file"
            from_file += 1
        kept = clean_keywords(keywords, creator, drop=(name,))
        captions = [name] + ([", ".join([name, *kept])] if kept else [])
        link_or_copy(image, out / rel)
        records.append({"image": rel.as_posix(), "captions": captions, "name_source": source,
                        "title": title, "keywords": kept, "category": rel.parent.as_posix()})
    write_jsonl(out / "manifest.jsonl", records)
    log.info("openclipart: %d names from SVG titles, %d from file names",
             len(records) - from_file, from_file)


# --------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSet:
    """A named data set: Debian packages plus the step that builds its folder.

    *options* names boolean keyword arguments of *prepare* that add optional
    parts (off by default).  A folder prepared with an option on is reused
    when the option is asked off; asking for it on rebuilds the folder.
    Bump *version* when *prepare* changes its output, so old folders get rebuilt.
    *uses* names data sets whose output *prepare* depends on (openclipart
    leaves out tuxpaint's test split): their versions go into the stamp, so
    bumping one rebuilds this folder too.
    """

    description: str
    packages: tuple[str, ...] = ()
    prepare: Callable[..., None] | None = None
    options: tuple[str, ...] = ()
    version: int = 1
    uses: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        return self.prepare is not None


DATASETS: dict[str, DataSet] = {
    "wallpapers": DataSet(
        "desktop wallpapers (photos and artwork), largest variant of each",
        ("mate-backgrounds", "plasma-workspace-wallpapers"),
        prepare_wallpapers,
    ),
    "opencv-samples": DataSet(
        "OpenCV sample images (baboon, fruits, messi, chessboards, stereo pairs...)",
        ("opencv-doc",),
        prepare_opencv_samples,
    ),
    "tuxpaint": DataSet(
        "Tux Paint clip-art stamps with English captions and translations",
        ("tuxpaint-stamps-default",),
        prepare_tuxpaint,
        version=3,  # 2: train.jsonl / test.jsonl; 3: groups joined by English caption
    ),
    "fashion-mnist": DataSet(
        "Fashion-MNIST 28x28 clothing images in 10 labelled class folders "
        "(test split; train too with --fashion-train)",
        ("dataset-fashion-mnist",),
        prepare_fashion_mnist,
        options=("train",),
    ),
    "openclipart": DataSet(
        "Open Clip Art Library 0.18 PNG clip art with captions from the SVG titles/keywords, "
        "without the drawings of Tux Paint's test stamps",
        ("openclipart-png", "openclipart-svg", "tuxpaint-stamps-default"),
        prepare_openclipart,
        version=2,  # 2: drop the drawings of Tux Paint test stamps
        uses=("tuxpaint",),
    ),
}


def count_images(folder: Path) -> int:
    return sum(1 for _ in iter_images(folder))


def _stamp_covers(old: object, new: dict[str, object]) -> bool:
    """Whether a folder stamped *old* has everything that *new* asks for."""
    if not isinstance(old, dict) or set(old) != set(new):
        return False
    old_options, new_options = old.get("options", {}), new.get("options", {})
    if any(old[key] != new[key] for key in new if key != "options"):
        return False
    if not isinstance(old_options, dict) or not isinstance(new_options, dict):
        return False
    return all(old_options.get(key, False) or not on for key, on in new_options.items())


def fetch(name: str, cache: Path, force: bool = False,
          options: Mapping[str, bool] | None = None) -> Path:
    """Download, extract and prepare data set *name*; return its folder.

    *options* turns on optional parts (``DataSet.options``), e.g.
    ``{"train": True}`` for fashion-mnist.
    """
    dataset = DATASETS[name]
    if not dataset.available:
        raise FetchError(f"data set {name!r} is not available yet ({dataset.description})")
    unknown = set(options or {}) - set(dataset.options)
    if unknown:
        raise FetchError(f"data set {name!r} has no option(s) {', '.join(sorted(unknown))}")
    opts = {key: bool((options or {}).get(key, False)) for key in dataset.options}
    _require_tools()
    debs = {pkg: download(pkg, cache) for pkg in dataset.packages}
    out = cache / name
    stamp: dict[str, object] = {"version": PREPARE_VERSION,
                                "debs": sorted(deb.name for deb in debs.values())}
    if dataset.version != 1:  # version 1 is left out: stamps from before versions stay valid
        stamp["dataset_version"] = dataset.version
    if dataset.uses:
        stamp["uses"] = {used: DATASETS[used].version for used in dataset.uses}
    if opts:
        stamp["options"] = opts
    stamp_path = out / STAMP
    if not force and stamp_path.is_file():
        try:
            if _stamp_covers(json.loads(stamp_path.read_text()), stamp):
                return out
        except ValueError:
            pass
    roots = {pkg: extract(pkg, deb, cache, force) for pkg, deb in debs.items()}
    log.info("preparing %s", name)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        assert dataset.prepare is not None
        dataset.prepare(roots, scratch, **opts)
        (scratch / STAMP).write_text(json.dumps(stamp) + "\n")
        _replace_dir(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def default_cache() -> Path:
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else DEFAULT_CACHE


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _list_text() -> str:
    width = max(map(len, DATASETS))
    lines = []
    for name, ds in DATASETS.items():
        pkgs = f" [{', '.join(ds.packages)}]" if ds.packages else ""
        lines.append(f"  {name:<{width}}  {ds.description}{pkgs}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fetch offline image data sets shipped as Debian packages "
        "(apt-get download + dpkg -x, no root needed).",
        epilog="data sets:\n" + _list_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="data sets to fetch")
    parser.add_argument("--list", action="store_true", help="list the data sets and exit")
    parser.add_argument(
        "--cache", type=Path, default=None, metavar="DIR",
        help=f"cache folder (default: ${ENV_CACHE} or {DEFAULT_CACHE})",
    )
    parser.add_argument("--force", action="store_true",
                        help="re-extract and re-prepare (downloaded .deb files are kept)")
    parser.add_argument("--fashion-train", action="store_true",
                        help="fashion-mnist: also write the 60,000-image train split "
                        "(kept by later runs without this flag, until --force)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("-v", "--verbose", action="store_true", help="show commands run")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="fetch: %(message)s")

    if args.list:
        print(_list_text())
        return 0
    if not args.names:
        parser.error("name at least one data set (see --list)")
    unknown = [name for name in args.names if name not in DATASETS]
    if unknown:
        parser.error(f"unknown data set(s): {', '.join(unknown)} (see --list)")

    cache = (args.cache or default_cache()).resolve()
    options = {"fashion-mnist": {"train": args.fashion_train}}
    try:
        for name in args.names:
            folder = fetch(name, cache, force=args.force, options=options.get(name))
            print(f"{name}: {count_images(folder)} images in {folder}", flush=True)
    except FetchError as exc:
        print(f"fetch: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
