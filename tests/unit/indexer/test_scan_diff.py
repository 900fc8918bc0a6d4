from __future__ import annotations

import os

import pytest

from indexer.diff import plan
from indexer.scan import normalize_roots, scan
from searchengine.errors import ConfigError
from searchengine.imaging import IMAGE_EXTENSIONS
from searchengine.store import FileErrorRecord, ImageRecord


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_finds_image_extensions_recursively_and_skips_the_rest(tmp_path):
    for name in ["a.jpg", "b.JPEG", "c.png", "d.webp", "e.gif", "f.bmp", "g.tif", "h.tiff", "sub/deep/i.jpg"]:
        touch(tmp_path / name)
    touch(tmp_path / "notes.txt")
    touch(tmp_path / ".thumbnails" / "t.jpg")
    os.mkfifo(tmp_path / "fifo.jpg")
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    os.symlink(tmp_path / "a.jpg", tmp_path / "link.jpg")
    result = scan([tmp_path], IMAGE_EXTENSIONS)
    names = sorted(os.path.relpath(f.path, tmp_path) for f in result.files)
    assert names == ["a.jpg", "b.JPEG", "c.png", "d.webp", "e.gif", "f.bmp", "g.tif", "h.tiff", "link.jpg",
                     "sub/deep/i.jpg"]
    assert result.errors == [(str(tmp_path / "fifo.jpg"), "not a regular file (a named pipe): not read")]


def test_unreadable_folder_is_a_scan_error_and_the_rest_is_scanned(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    touch(locked / "a.jpg")
    touch(tmp_path / "ok.jpg")
    real_scandir = os.scandir

    def scandir(path):  # as for a folder without read permission (the tests run as root in CI)
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = scan([tmp_path], IMAGE_EXTENSIONS)
    assert result.errors == [(str(locked), "cannot read folder: Permission denied")]
    assert [f.path for f in result.files] == [str(tmp_path / "ok.jpg")]


def test_single_files_and_roots(tmp_path):
    a = touch(tmp_path / "a.jpg")
    txt = touch(tmp_path / "a.txt")
    result = scan([a, txt], IMAGE_EXTENSIONS)
    assert [f.path for f in result.files] == [str(a)]
    assert result.errors and "extension" in result.errors[0][1]
    with pytest.raises(ConfigError, match="no such"):
        normalize_roots([tmp_path / "missing"])
    assert normalize_roots([tmp_path, tmp_path / "a.jpg", tmp_path]) == [str(tmp_path)]


def row(i, path, size=1, mtime=1.0, h="h"):
    return ImageRecord(id=i, path=path, size=size, mtime=mtime, content_hash=h, width=1, height=1, indexed_at=0.0)


def test_plan_classifies_files(tmp_path):
    same = touch(tmp_path / "same.jpg")
    changed = touch(tmp_path / "changed.jpg")
    new = touch(tmp_path / "new.jpg")
    bad = touch(tmp_path / "bad.jpg")
    scanned = scan([tmp_path], IMAGE_EXTENSIONS)
    st = os.stat(same)
    rows = [row(1, str(same), st.st_size, st.st_mtime), row(2, str(changed), 999, 1.0), row(3, str(tmp_path / "gone.jpg"))]
    bst = os.stat(bad)
    errors = [FileErrorRecord(str(bad), "broken", bst.st_size, bst.st_mtime, 0.0),
              FileErrorRecord(str(tmp_path / "vanished-bad.jpg"), "broken", 1, 1.0, 0.0)]
    p = plan(scanned, rows, errors)
    assert p.unchanged == 1 and p.known_failures == 1
    assert sorted(e.path for e in p.candidates) == sorted([str(changed), str(new)])
    assert [r.id for r in p.vanished] == [3]
    assert p.stale_errors == [str(tmp_path / "vanished-bad.jpg")]
    retry = plan(scanned, rows, errors, retry_errors=True)
    assert str(bad) in {e.path for e in retry.candidates}
