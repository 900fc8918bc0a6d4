"""Disk full and write errors: the command fails with a one-line error (no traceback), the previous
index file is untouched and still loads and searches, and no temp file is left next to it.

Real failures come from RLIMIT_FSIZE (writes past the limit fail with EFBIG; SIGXFSZ ignored)
set in the command's own process; a full disk (ENOSPC) is simulated in :meth:`VectorIndex.save`."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from searchengine import SearchEngine
from searchengine._fs import file_checksum, remove_stale_temps, temp_files
from searchengine.errors import VectorIndexError
from searchengine.index import VectorIndex
from tests.support import crashkit, imagegen

FACTORY = "HNSW64"  # a large file per vector: the index outgrows SQLite's few pages of WAL


def _vectors(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# -- VectorIndex.save ---------------------------------------------------------------------------


def test_save_failing_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "index.faiss"
    old = VectorIndex.build("Flat", 32, np.arange(10), _vectors(10))
    checksum = old.save(path)
    before = path.read_bytes()
    bigger = VectorIndex.build("Flat", 32, np.arange(500), _vectors(500, seed=1))
    real_fdopen = os.fdopen

    class FullDisk:
        """A file that takes 1,000 bytes, then fails like a full disk."""

        def __init__(self, fh):
            self.fh, self.left = fh, 1000

        def write(self, data):
            if len(data) > self.left:
                self.fh.write(bytes(data[: self.left]))
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(data)
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r": FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(VectorIndexError, match="No space left on device; the previous index file is unchanged"):
        bigger.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert temp_files(path) == []
    assert VectorIndex.load(path, "Flat", 32, checksum=checksum).ntotal == 10


def test_save_under_a_file_size_limit_never_installs_a_truncated_file(tmp_path):
    """faiss's own file writer reports a failed final flush only on stderr: with the limit a few bytes
    short of the file's size, the truncated file used to be put in place with its own checksum."""
    path = tmp_path / "index.faiss"
    index = VectorIndex.build("Flat", 32, np.arange(1000), _vectors(1000))
    checksum = index.save(path)
    size, before = path.stat().st_size, path.read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal, sys
        import numpy as np
        from searchengine.errors import VectorIndexError
        from searchengine.index import VectorIndex
        index = VectorIndex.load({str(path)!r}, "Flat", 32)
        index.add(np.array([5000]), np.ones((1, 32), dtype=np.float32) / 32 ** 0.5)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({size - 40}, {size - 40}))
        try:
            index.save({str(path)!r})
        except VectorIndexError as exc:
            print(exc)
            sys.exit(3)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=crashkit.REPO, env=dict(os.environ, PYTHONPATH=str(crashkit.REPO)))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "File too large; the previous index file is unchanged" in done.stdout
    assert path.read_bytes() == before and temp_files(path) == []
    assert VectorIndex.load(path, "Flat", 32, checksum=checksum).ntotal == 1000


def test_temp_files_of_dead_processes_are_removed_by_the_next_save(tmp_path):
    path = tmp_path / "index.faiss"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".index.faiss.{int(dead.stdout)}.abcd.tmp"
    live = tmp_path / f".index.faiss.{os.getppid()}.abcd.tmp"  # a running process's save: left alone
    other = tmp_path / ".texts.faiss.1.abcd.tmp"  # another index's temp file: not this save's business
    for f in (stale, live, other):
        f.write_bytes(b"half")
    VectorIndex.build("Flat", 32, np.arange(3), _vectors(3)).save(path)
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temps(path) == 0


# -- the CLI under a file size limit ----------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tiny_model, tmp_path_factory) -> crashkit.Workload:
    """150 images indexed into an HNSW64 collection (copied per test)."""
    root = tmp_path_factory.mktemp("disk-full")
    w = crashkit.index_workload(root, tiny_model, images=150, batch_size=32)
    rc, out = crashkit.Launcher("fork").run(w.argv + ["--index-factory", FACTORY], w.full_env(), root / "setup.log")
    assert rc == 0, out
    return w


@pytest.fixture
def work(base, tmp_path) -> crashkit.Workload:
    home = tmp_path / "home"
    shutil.copytree(base.home, home)
    return crashkit.Workload(base.command, list(base.argv), home, files=set(base.files))


def _run_limited(w: crashkit.Workload, argv: list[str], limit: int, log: Path) -> tuple[int, str]:
    return crashkit.Launcher("fork").run(argv, w.full_env(), log, fsize=limit)


def _assert_previous_index_intact(w: crashkit.Workload, digest: str) -> None:
    index_file = w.collection_dir / "index.faiss"
    assert hashlib.sha256(index_file.read_bytes()).hexdigest() == digest  # not replaced, not truncated
    assert list(w.collection_dir.glob(".*.tmp")) == []
    assert crashkit.integrity_problems(w.db) == []
    with SearchEngine.open(w.collection, data_dir=w.home, writable=False) as engine:
        rec = engine.collection
        assert rec.index_checksum == digest  # the store still names the file in place
        assert VectorIndex.load(index_file, rec.index_factory, rec.dim, checksum=rec.index_checksum).ntotal >= 150
        assert engine.search_text("a photo", k=3)
        live = np.sort(engine.store.live_ids(rec.id))
        assert np.array_equal(np.sort(engine.index.ids()), live)  # committed rows reconciled in


def _assert_clean_error(rc: int, out: str, *phrases: str) -> None:
    assert rc == 1, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, out
    for phrase in phrases:
        assert phrase in lines[0], out


def _finish(w: crashkit.Workload, tmp_path: Path) -> None:
    run = crashkit.CrashRun(w, crashkit.Launcher("fork"), np.random.default_rng(0), log_dir=tmp_path)
    res = run.finish(0)
    assert not res.failures and not res.lost, res


def test_index_whose_index_save_hits_the_limit(work, tmp_path):
    digest = file_checksum(work.collection_dir / "index.faiss")
    folder = Path(work.argv[1])
    work.files |= {str(imagegen.photo(folder / f"more{i}.jpg", seed=5000 + i)) for i in range(5)}
    limit = (work.collection_dir / "index.faiss").stat().st_size  # the grown index cannot fit
    rc, out = _run_limited(work, work.argv, limit, tmp_path / "limited.log")
    _assert_clean_error(rc, out, "cannot save the vector index", "File too large",
                        "the previous index file is unchanged")
    assert len(crashkit.snapshot(work.db, work.collection).images) == 155  # the rows were committed first
    _assert_previous_index_intact(work, digest)
    _finish(work, tmp_path)


def test_index_whose_database_writes_hit_the_limit(work, tmp_path):
    digest = file_checksum(work.collection_dir / "index.faiss")
    folder = Path(work.argv[1])
    work.files |= {str(imagegen.photo(folder / f"more{i}.jpg", seed=6000 + i)) for i in range(60)}
    rc, out = _run_limited(work, work.argv[:-3] + ["--batch-size", "2", "--json"], 48 * 1024, tmp_path / "limited.log")
    # the store fails first; the index save the pipeline then attempts on the way out fails too, but
    # the store's error is the one reported
    assert rc == 1 and "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "metadata store" in errors[0], out
    assert 150 <= len(crashkit.snapshot(work.db, work.collection).images) < 210
    _assert_previous_index_intact(work, digest)
    _finish(work, tmp_path)


def test_rebuild_index_that_hits_the_limit(work, tmp_path):
    digest = file_checksum(work.collection_dir / "index.faiss")
    limit = (work.collection_dir / "index.faiss").stat().st_size // 2
    rc, out = _run_limited(work, ["rebuild-index", "--json"], limit, tmp_path / "limited.log")
    _assert_clean_error(rc, out, "cannot save the vector index", "the previous index file is unchanged")
    _assert_previous_index_intact(work, digest)
