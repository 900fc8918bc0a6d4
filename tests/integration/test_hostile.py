"""Hostile and odd input through the whole pipeline (scan, decode in a worker process, encode, write).

Each case writes its own fixture next to two good images and indexes the folder with one
decode worker. Each hostile file must end as a recorded per-file error with a meaningful
message (pipes and sockets named like images included: never opened), or a correct index entry;
the good images are always indexed and the run always returns.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image, ImageOps

import indexer.run
from searchengine import SearchEngine
from tests.support import imagegen
from tests.support.privileges import permissions_enforced

COLL = "hostile"
GOOD = {"good0.jpg": (64, 48), "good1.png": (80, 60)}


@dataclass(frozen=True)
class Error:
    path: str  # as recorded: relative to the folder, or absolute; "re:..." a regular expression for it
    message: str  # a regular expression the recorded message must match


@dataclass(frozen=True)
class Indexed:
    path: str
    size: tuple[int, int]  # (width, height) as stored: after the EXIF orientation


def _escaped(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# --- one builder a case: writes its fixture into ``folder`` and says how each file must end ---


def _bombs(folder: Path, tmp: Path, mp) -> list:
    imagegen.png_bomb(folder / "bomb.png")  # 30000 x 30000 declared, 4 KB on disk
    imagegen.jpeg_bomb(folder / "bomb.jpg")  # 65000 x 65000 declared
    imagegen.jpeg_bomb(folder / "capped.jpg", 12000, 12000)  # under Pillow's limit, over ours
    bomb = r"image too large: Image size \(\d+ pixels\) exceeds limit"
    return [Error("bomb.png", bomb), Error("bomb.jpg", bomb),
            Error("capped.jpg", r"^image too large: 12000x12000 pixels exceeds the 100,000,000 pixel limit$")]


def _truncated(folder: Path, tmp: Path, mp) -> list:
    imagegen.truncated_jpeg(folder / "t.jpg")
    imagegen.truncated_png(folder / "t.png")
    imagegen.truncated_webp(folder / "t.webp")
    imagegen.truncated_gif(folder / "t.gif")
    return [Error("t.jpg", r"^cannot decode image: image file is truncated"),
            Error("t.png", r"^cannot decode image: image file is truncated"),
            Error("t.webp", r"^cannot decode image: "),
            Error("t.gif", r"^cannot decode image: image file is truncated")]


def _zero_byte(folder: Path, tmp: Path, mp) -> list:
    imagegen.zero_byte(folder / "empty.jpg")
    return [Error("empty.jpg", r"^empty file$")]


def _text_as_jpg(folder: Path, tmp: Path, mp) -> list:
    imagegen.text_as_jpg(folder / "notes.jpg")
    return [Error("notes.jpg", r"^not an image \(or an unsupported format\)$")]


def _huge_but_legal(folder: Path, tmp: Path, mp) -> list:
    imagegen.big_png(folder / "huge.png", (9000, 9000))  # 81M pixels, under the 100M cap
    imagegen.big_jpeg(folder / "big.jpg")  # 4000 x 3000, decoded at 1/8 scale (draft)
    return [Indexed("huge.png", (9000, 9000)), Indexed("big.jpg", (4000, 3000))]


def _odd_modes(folder: Path, tmp: Path, mp) -> list:
    imagegen.cmyk_jpeg(folder / "cmyk.jpg")
    imagegen.png16(folder / "sixteen.png")
    imagegen.palette_alpha_png(folder / "palette.png")
    return [Indexed("cmyk.jpg", (40, 30)), Indexed("sixteen.png", (64, 8)), Indexed("palette.png", (20, 10))]


def _animated(folder: Path, tmp: Path, mp) -> list:
    imagegen.animated_gif(folder / "anim.gif")
    imagegen.animated_webp(folder / "anim.webp")
    return [Indexed("anim.gif", (16, 16)), Indexed("anim.webp", (16, 16))]


def _orientations(folder: Path, tmp: Path, mp) -> list:
    for o in range(1, 9):
        imagegen.exif_rotated_jpeg(folder / f"o{o}.jpg", o, size=(64, 32))
    return [Indexed(f"o{o}.jpg", (64, 32) if o <= 4 else (32, 64)) for o in range(1, 9)]


def _broken_exif(folder: Path, tmp: Path, mp) -> list:
    imagegen.broken_exif_jpeg(folder / "exif.jpg")  # Orientation 6 with a malformed tag beside it
    return [Indexed("exif.jpg", (32, 64))]


def _icc(folder: Path, tmp: Path, mp) -> list:
    imagegen.icc_jpeg(folder / "srgb.jpg")
    imagegen.icc_jpeg(folder / "garbage.jpg", profile=b"not a profile" * 40)
    return [Indexed("srgb.jpg", (40, 30)), Indexed("garbage.jpg", (40, 30))]


def _names(folder: Path, tmp: Path, mp) -> list:
    bad = os.fsencode(folder) + b"/caf\xe9-latin1.jpg"
    with open(bad, "wb") as fh:
        fh.write(imagegen.photo(tmp / "x.jpg", seed=3).read_bytes())
    long_name = "é" * 125 + ".jpg"  # 254 bytes: the longest a name may be is 255
    imagegen.photo(folder / long_name, seed=4)
    return [Error(_escaped(os.fsdecode(bad)), r"^file name is not valid UTF-8; rename the file to index it$"),
            Indexed(long_name, (64, 48))]


def _path_too_long(folder: Path, tmp: Path, mp) -> list:
    fd = os.open(folder, os.O_RDONLY)  # built one level at a time: the whole path is over PATH_MAX
    try:
        for _ in range(20):
            os.mkdir("d" * 250, dir_fd=fd)
            fd, old = os.open("d" * 250, os.O_RDONLY, dir_fd=fd), fd
            os.close(old)
        with open(os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as fh:
            fh.write(imagegen.photo(tmp / "x.jpg", seed=5).read_bytes())
    finally:
        os.close(fd)
    return [Error("re:" + re.escape(str(folder)) + r"(/d{250})+", r"^cannot read folder: File name too long$")]


def _symlink_loops(folder: Path, tmp: Path, mp) -> list:
    os.symlink("b.jpg", folder / "a.jpg")
    os.symlink("a.jpg", folder / "b.jpg")
    (folder / "sub").mkdir()
    os.symlink(folder, folder / "sub" / "up")  # a folder loop: each real folder is read once
    loop = r"^cannot stat file: Too many levels of symbolic links$"
    return [Error("a.jpg", loop), Error("b.jpg", loop)]


def _symlinks_out_of_root(folder: Path, tmp: Path, mp) -> list:
    outside = tmp / "outside"
    imagegen.photo(outside / "secret.jpg", seed=6)
    os.symlink(outside / "secret.jpg", folder / "link.jpg")
    os.symlink(outside, folder / "linked-folder")
    os.symlink(folder / "good0.jpg", folder / "inner-link.jpg")  # stays inside: followed
    message = "^symlink to " + re.escape(str(outside)) + r".*, outside the indexed folders: not followed"
    return [Error("link.jpg", message), Error("linked-folder", message), Indexed("inner-link.jpg", (64, 48))]


def _fifo(folder: Path, tmp: Path, mp) -> list:
    os.mkfifo(folder / "pipe.jpg")  # opening it for reading would block forever
    return [Error("pipe.jpg", r"^not a regular file \(a named pipe\): not read$")]


def _socket(folder: Path, tmp: Path, mp) -> list:
    mp.chdir(folder)  # a relative name: socket paths are limited to about 100 bytes
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("sock.jpg")  # the socket file stays after the close
    assert (folder / "sock.jpg").is_socket()
    return [Error("sock.jpg", r"^not a regular file \(a socket\): not read$")]


def _unreadable(folder: Path, tmp: Path, mp) -> list:
    imagegen.photo(folder / "locked.jpg", seed=7).chmod(0)
    imagegen.photo(folder / "closed" / "inside.jpg", seed=8)
    (folder / "closed").chmod(0)
    return [Error("locked.jpg", r"^cannot read file: Permission denied$"),
            Error("closed", r"^cannot read folder: Permission denied$")]


def _after_scan(change: Callable[[Path], None]):
    """Run ``change`` on the folder between the scan and the decoding (deterministically)."""
    def install(folder: Path, mp) -> None:
        real = indexer.run.scan  # what index_folder calls

        def scan_then_change(*args, **kwargs):
            result = real(*args, **kwargs)
            change(folder)
            return result

        mp.setattr(indexer.run, "scan", scan_then_change)
    return install


def _vanishes(folder: Path, tmp: Path, mp) -> list:
    imagegen.photo(folder / "gone.jpg", seed=9)
    _after_scan(lambda f: os.unlink(f / "gone.jpg"))(folder, mp)
    return [Error("gone.jpg", r"^cannot read file: No such file or directory$")]


def _changes(folder: Path, tmp: Path, mp) -> list:
    imagegen.photo(folder / "edited.jpg", seed=10)
    imagegen.photo(folder / "cut.jpg", seed=11)

    def change(f: Path) -> None:
        imagegen.photo(f / "edited.jpg", seed=12, size=(90, 70))  # what was decoded is what is stored
        data = (f / "cut.jpg").read_bytes()
        (f / "cut.jpg").write_bytes(data[: len(data) // 2])

    _after_scan(change)(folder, mp)
    return [Indexed("edited.jpg", (90, 70)), Error("cut.jpg", r"^cannot decode image: image file is truncated")]


def _becomes_fifo(folder: Path, tmp: Path, mp) -> list:
    imagegen.photo(folder / "swapped.jpg", seed=13)

    def change(f: Path) -> None:
        os.unlink(f / "swapped.jpg")
        os.mkfifo(f / "swapped.jpg")

    _after_scan(change)(folder, mp)
    return [Error("swapped.jpg", r"^cannot read file: it is a named pipe, not a regular file$")]


CASES = {
    "decompression bombs": _bombs,
    "truncated jpeg png webp gif": _truncated,
    "zero-byte file": _zero_byte,
    "text file named .jpg": _text_as_jpg,
    "huge but legal": _huge_but_legal,
    "cmyk, 16-bit, palette with transparency": _odd_modes,
    "animated gif and webp": _animated,
    "exif orientations 1-8": _orientations,
    "broken exif": _broken_exif,
    "icc profiles": _icc,
    "non-utf-8 and very long names": _names,
    "path over PATH_MAX": _path_too_long,
    "symlink loops": _symlink_loops,
    "symlinks out of the root": _symlinks_out_of_root,
    "fifo": _fifo,
    "socket": _socket,
    "unreadable file and folder": _unreadable,
    "vanishes after the scan": _vanishes,
    "changes after the scan": _changes,
    "becomes a fifo after the scan": _becomes_fifo,
}


def stored(folder: Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """(path -> (width, height)) of the indexed rows and (path -> message) of the recorded errors."""
    with SearchEngine.open(COLL) as engine:
        rows = engine.store.images_under(engine.collection.id, [str(folder)])
        return {r.path: (r.width, r.height) for r in rows}, {e.path: e.error for e in engine.errors()}


def _full(folder: Path, path: str) -> str:
    return path if path.startswith("/") else str(folder / path)


def _recorded(folder: Path, want: Error, errors: dict[str, str]) -> list[str]:
    if want.path.startswith("re:"):
        return [p for p in errors if re.fullmatch(want.path[3:], p)]
    return [p for p in errors if p == _full(folder, want.path)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_ends_as_an_error_or_a_correct_entry(run, tmp_path, monkeypatch, case):
    monkeypatch.setenv("SEARCHENGINE_WORKERS", "1")  # decoded in an isolated worker process
    folder = tmp_path / "pics"
    imagegen.photo(folder / "good0.jpg", seed=1, size=GOOD["good0.jpg"])
    imagegen.photo(folder / "good1.png", seed=2, size=GOOD["good1.png"])
    expected = CASES[case](folder, tmp_path, monkeypatch)
    try:
        with permissions_enforced():
            report = run(folder)
    finally:
        for path in (folder / "locked.jpg", folder / "closed"):
            if path.exists():
                path.chmod(0o755)
    rows, errors = stored(folder)
    for name, size in GOOD.items():
        assert rows[str(folder / name)] == size
    want_errors = [e for e in expected if isinstance(e, Error)]
    for want in want_errors:
        matches = _recorded(folder, want, errors)
        assert len(matches) == 1, f"{want.path}: no recorded error (errors: {errors})"
        assert re.search(want.message, errors[matches[0]]), (want.path, errors[matches[0]])
        assert matches[0] not in rows
    assert report.failed == len(errors) == len(want_errors), errors  # nothing else failed
    assert {e.path for e in report.errors} == set(errors)
    for want in expected:
        if isinstance(want, Indexed):
            assert rows[_full(folder, want.path)] == want.size, want.path
    assert len(rows) == len(GOOD) + sum(isinstance(e, Indexed) for e in expected)


def test_exif_orientation_turns_the_pixels_not_just_the_size(run, tmp_path, monkeypatch):
    """Each oriented JPEG is encoded upright: it finds the upright picture with cosine ~1."""
    monkeypatch.setenv("SEARCHENGINE_WORKERS", "1")
    folder, upright = tmp_path / "pics", tmp_path / "upright"
    upright.mkdir()
    for o in range(1, 9):
        path = imagegen.exif_rotated_jpeg(folder / f"o{o}.jpg", o, size=(64, 32))
        with Image.open(path) as raw:
            ImageOps.exif_transpose(raw.convert("RGB")).save(upright / f"o{o}.png")
    run(folder)
    with SearchEngine.open(COLL) as engine:
        for o in range(1, 9):
            hits = engine.search_image(upright / f"o{o}.png", k=8)
            best = [h for h in hits if h.score > hits[0].score - 1e-4]
            assert hits[0].score == pytest.approx(1.0, abs=2e-3)
            assert str(folder / f"o{o}.jpg") in {h.path for h in best}, o


def test_a_file_changed_after_the_scan_is_settled_by_the_next_run(run, tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHENGINE_WORKERS", "1")
    folder = tmp_path / "pics"
    imagegen.photo(folder / "good0.jpg", seed=1)
    imagegen.photo(folder / "edited.jpg", seed=10)
    imagegen.photo(folder / "gone.jpg", seed=9)

    def change(f: Path) -> None:
        imagegen.photo(f / "edited.jpg", seed=12, size=(90, 70))
        os.unlink(f / "gone.jpg")

    with monkeypatch.context() as mp:
        _after_scan(change)(folder, mp)
        first = run(folder)
    assert (first.added, first.failed) == (2, 1)
    again = run(folder)  # edited.jpg's (size, mtime) differ from the scan's: the content it has, only touched
    assert (again.added, again.updated, again.encoded, again.unchanged, again.failed) == (0, 0, 0, 2, 0)
    rows, errors = stored(folder)
    assert errors == {} and rows[str(folder / "edited.jpg")] == (90, 70)


# --- decode isolation: a hung or memory-hungry decoder costs one file ---


def _hang_on(monkeypatch, name: str, marker: bytes) -> None:
    import indexer.pipeline as pipeline

    real = pipeline.safe_open

    def hanging(data, **kw):  # runs in the forked workers
        if isinstance(data, bytes) and data == marker:
            time.sleep(3600)
        return real(data, **kw)

    monkeypatch.setattr(pipeline, "safe_open", hanging)


@pytest.mark.timeout(120)
def test_a_hung_decoder_costs_one_file(run, photos, monkeypatch):
    monkeypatch.setenv("SEARCHENGINE_WORKERS", "2")
    monkeypatch.setenv("SEARCHENGINE_DECODE_TIMEOUT", "2")
    _hang_on(monkeypatch, "img2.jpg", (photos / "img2.jpg").read_bytes())
    started = time.monotonic()
    report = run(photos)
    elapsed = time.monotonic() - started
    assert (report.added, report.failed) == (5, 1)
    assert [(e.path, e.error) for e in report.errors] == [(str(photos / "img2.jpg"), "decoding timed out after 2 s")]
    assert elapsed < 30  # killed after about 2 s, not retried
    rows, errors = stored(photos)
    assert len(rows) == 5 and list(errors) == [str(photos / "img2.jpg")]


@pytest.mark.timeout(120)
def test_two_hung_files_in_one_run(run, photos, monkeypatch):
    """Two hangs, and the files in flight beside them are decoded again, once."""
    import indexer.pipeline as pipeline

    monkeypatch.setenv("SEARCHENGINE_WORKERS", "2")
    monkeypatch.setenv("SEARCHENGINE_DECODE_TIMEOUT", "1.5")
    hung = {(photos / n).read_bytes() for n in ("img1.jpg", "img4.jpg")}
    real = pipeline.safe_open

    def hanging(data, **kw):
        if isinstance(data, bytes) and data in hung:
            time.sleep(3600)
        return real(data, **kw)

    monkeypatch.setattr(pipeline, "safe_open", hanging)
    report = run(photos)
    assert (report.added, report.failed) == (4, 2)
    assert sorted((e.path, e.error) for e in report.errors) == [
        (str(photos / n), "decoding timed out after 1.5 s") for n in ("img1.jpg", "img4.jpg")]


def test_a_file_over_the_memory_limit_costs_one_file(run, photos, monkeypatch):
    monkeypatch.setenv("SEARCHENGINE_WORKERS", "1")
    monkeypatch.setenv("SEARCHENGINE_DECODE_MEMORY_MB", "64")  # the 9000 x 9000 grey PNG needs 81 MB
    imagegen.big_png(photos / "huge.png", (9000, 9000))
    report = run(photos)
    assert (report.added, report.failed) == (6, 1)
    assert report.errors[0].path == str(photos / "huge.png")
    assert report.errors[0].error == ("out of memory decoding this file (a decode worker may use 64 MB more than "
                                      "at start; SEARCHENGINE_DECODE_MEMORY_MB raises it)")
    monkeypatch.setenv("SEARCHENGINE_DECODE_MEMORY_MB", "512")  # 81 MB grey + 243 MB as RGB
    assert run(photos, retry_errors=True).added == 1  # fits under a higher limit


def test_settings_for_isolation(monkeypatch):
    from searchengine.config import Settings
    from searchengine.errors import ConfigError

    assert (Settings().decode_timeout, Settings().decode_memory()) == (60.0, 4_000_000_000)
    assert Settings(max_pixels=1000).decode_memory() == 1 << 30
    assert Settings(decode_memory_mb=0).decode_memory() == 0
    monkeypatch.setenv("SEARCHENGINE_DECODE_TIMEOUT", "2.5")
    monkeypatch.setenv("SEARCHENGINE_DECODE_MEMORY_MB", "300")
    assert (Settings.from_env().decode_timeout, Settings.from_env().decode_memory()) == (2.5, 300 << 20)
    monkeypatch.setenv("SEARCHENGINE_DECODE_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="SEARCHENGINE_DECODE_TIMEOUT must be a number"):
        Settings.from_env()
    with pytest.raises(ConfigError, match="decode timeout"):
        Settings(decode_timeout=-1)


def test_permissions_enforced_applies_and_restores(tmp_path):
    """The permission helper makes mode 000 refuse reads, and restores this thread's capabilities."""
    locked = imagegen.photo(tmp_path / "l.jpg", seed=1)
    locked.chmod(0)
    with permissions_enforced():
        with pytest.raises(PermissionError):
            locked.read_bytes()
    if os.geteuid() == 0:
        assert locked.read_bytes()  # root again
    locked.chmod(0o644)
