"""A real kill: SIGKILL an ``index`` run mid-way, then check the store and finish the work."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from searchengine import SearchEngine
from tests import imagegen

N = 150


def _rows(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_sigkill_mid_run_then_rerun_completes_with_each_file_once(tiny_model, tmp_path, _isolated_home):
    folder = tmp_path / "many"
    for i in range(N):
        imagegen.photo(folder / f"p{i:03d}.jpg", seed=1000 + i)
    cmd = [sys.executable, "-m", "searchengine", "index", str(folder), "--model", tiny_model,
           "--batch-size", "1", "--workers", "0"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    db = _isolated_home / "searchengine.db"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _rows(db) < 10 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = _rows(db)
    assert 0 < at_kill < N, f"the run was not caught mid-way ({at_kill} rows)"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    done = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with SearchEngine.open("default") as engine:
        cid = engine.collection.id
        paths = [r.path for r in engine.store.images_under(cid, [str(folder)])]
        assert len(paths) == len(set(paths)) == N
        assert sorted(engine.index.ids().tolist()) == sorted(engine.store.live_ids(cid).tolist())
