"""The one atomic-write helper: the target holds the old bytes or all of the new ones, never a
temp file left by a failed write, and temp files of dead writers are swept."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from searchengine import _fs


def test_write_atomic_puts_all_bytes_in_place_and_returns_their_sha256(tmp_path):
    path = tmp_path / "sub" / "file.bin"  # the folder is created
    digest = _fs.write_atomic(path, lambda sink: (sink(b"abc"), sink(b"def")))
    assert path.read_bytes() == b"abcdef" and digest == hashlib.sha256(b"abcdef").hexdigest()
    assert digest == _fs.file_checksum(path)
    assert _fs.write_bytes_atomic(path, b"", durable=False) == hashlib.sha256(b"").hexdigest()
    assert path.read_bytes() == b"" and os.listdir(path.parent) == ["file.bin"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def fail(sink):
        sink(b"half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        _fs.write_atomic(path, fail)
    assert path.read_bytes() == b"old" and _fs.temp_files(path) == []
    with pytest.raises(KeyboardInterrupt):
        with _fs.AtomicFile(path) as out:
            out.file.write(b"new")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["file.bin"]


def test_commit_then_exit_does_not_write_twice_and_an_explicit_commit_can_fail_cleanly(tmp_path, monkeypatch):
    path = tmp_path / "file.bin"
    with _fs.AtomicFile(path) as out:
        out.file.write(b"one")
        out.commit()
    assert path.read_bytes() == b"one"
    monkeypatch.setattr(_fs.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    out = _fs.AtomicFile(path)
    out.file.write(b"two")
    with pytest.raises(OSError, match="I/O error"):
        out.commit()
    assert path.read_bytes() == b"one" and _fs.temp_files(path) == []


def test_temp_files_name_their_writer_and_only_dead_writers_are_swept(tmp_path):
    path = tmp_path / "index.faiss"
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale = tmp_path / f".index.faiss.{dead}.abcd_123.tmp"
    live = tmp_path / f".index.faiss.{os.getppid()}.abcd.tmp"
    odd = tmp_path / ".index.faiss.x.tmp"  # no pid: nobody's write in progress
    other = tmp_path / ".texts.faiss.1.abcd.tmp"
    for f in (stale, live, odd, other):
        f.write_bytes(b"half")
    assert _fs.writer_pid(stale) == dead and _fs.writer_pid(odd) is None
    assert _fs.temp_files(path) == sorted([stale, live, odd])
    assert _fs.remove_stale_temps(path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
    with _fs.AtomicFile(path, clean=True) as out:
        assert _fs.writer_pid(out.temp) == os.getpid() and out.temp.parent == tmp_path
        out.file.write(b"x")
    assert _fs.pid_alive(os.getpid()) and not _fs.pid_alive(dead)


def test_fsync_helpers_accept_what_they_are_given(tmp_path):
    file = tmp_path / "f"
    file.write_bytes(b"x")
    _fs.fsync_file(file)
    _fs.fsync_dir(tmp_path)
    _fs.fsync_dir(tmp_path / "missing")  # nothing to sync: no error
    assert Path(file).read_bytes() == b"x"
