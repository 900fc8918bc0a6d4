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
    python data/fetch.py wallpapers opencv-samples tuxpaint

For each data set one line goes to stdout: ``NAME: N images in PATH``.
Progress goes to stderr (silence it with ``-q``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fetch")

ENV_CACHE = "SEARCHENGINE_DATA_CACHE"
DEFAULT_CACHE = Path(__file__).resolve().parent / "cache"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
STAMP = ".fetch-stamp.json"
# Bump when a prepare function changes its output, so old folders get rebuilt.
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


def prepare_tuxpaint(roots: PackageRoots, out: Path) -> None:
    """Tux Paint stamps (png) with their captions in ``manifest.jsonl``.

    Keeps the category folders (``animals/mammals/lion.png``), since a few
    stems occur in several categories.  ``*_mirror.png`` (pre-mirrored copies
    of another stamp) are skipped.
    """
    stamps = roots["tuxpaint-stamps-default"] / "usr/share/tuxpaint/stamps"
    records = []
    for image in iter_images(stamps):
        if image.stem.endswith("_mirror"):
            continue
        rel = image.relative_to(stamps)
        txt = image.with_suffix(".txt")
        captions = read_stamp_captions(txt) if txt.is_file() else []
        if not captions:
            log.warning("no description for %s", rel)
        link_or_copy(image, out / rel)
        records.append({"image": rel.as_posix(), "captions": captions, "object": image.stem,
                        "category": rel.parent.as_posix()})
    with (out / "manifest.jsonl").open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSet:
    """A named data set: Debian packages plus the step that builds its folder."""

    description: str
    packages: tuple[str, ...] = ()
    prepare: Callable[[PackageRoots, Path], None] | None = None

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
    ),
    "fashion-mnist": DataSet("TODO: labelled 28x28 clothing images (tracked in its own issue)"),
    "openclipart": DataSet("TODO: Open Clip Art Library images (tracked in its own issue)"),
}


def count_images(folder: Path) -> int:
    return sum(1 for _ in iter_images(folder))


def fetch(name: str, cache: Path, force: bool = False) -> Path:
    """Download, extract and prepare data set *name*; return its folder."""
    dataset = DATASETS[name]
    if not dataset.available:
        raise FetchError(f"data set {name!r} is not available yet ({dataset.description})")
    _require_tools()
    debs = {pkg: download(pkg, cache) for pkg in dataset.packages}
    out = cache / name
    stamp = {"version": PREPARE_VERSION, "debs": sorted(deb.name for deb in debs.values())}
    stamp_path = out / STAMP
    if not force and stamp_path.is_file():
        try:
            if json.loads(stamp_path.read_text()) == stamp:
                return out
        except ValueError:
            pass
    roots = {pkg: extract(pkg, deb, cache, force) for pkg, deb in debs.items()}
    log.info("preparing %s", name)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        assert dataset.prepare is not None
        dataset.prepare(roots, scratch)
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
    try:
        for name in args.names:
            folder = fetch(name, cache, force=args.force)
            print(f"{name}: {count_images(folder)} images in {folder}", flush=True)
    except FetchError as exc:
        print(f"fetch: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
