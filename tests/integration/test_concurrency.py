"""One writer per collection, any number of readers.

Readers (threads sharing one engine, and separate processes) search while a writer indexes a new
folder and removes another: no reader errors, no id a search returns was removed before that
search started, and the readers pick up the writer's new index generation without reopening.
A second writer is refused with a clear message, in-process and from the CLI, and a writer
killed with SIGKILL leaves no lock behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

from indexer import index_folder, remove_paths
from searchengine import SearchEngine
from searchengine.errors import NotFoundError, WriterBusyError
from searchengine.search.hits import dedup
from tests.support import imagegen
from tests.support.concurrency_reader import leaked_ids, read_results, reader_errors

COLL = "conc"
ROOT = Path(__file__).parents[2]


def _folder(path: Path, n: int, seed: int) -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        imagegen.photo(path / f"p{i:03d}.jpg", seed=seed + i)
    return path


@pytest.fixture
def collection(run, tmp_path):
    """Folder ``a`` indexed (its ``gone`` sub-folder is what the writer removes); ``b`` not yet."""
    a = _folder(tmp_path / "a", 16, 100)
    _folder(a / "gone", 12, 200)
    b = _folder(tmp_path / "b", 24, 300)
    run(a)
    return a, b


def _write(a: Path, b: Path) -> dict[int, float]:
    """As the writer: index ``b``, then remove ``a/gone``; returns each removed id -> the monotonic
    time its removal was committed by (removal is visible to any search that starts later)."""
    with SearchEngine.open(COLL, writable=True) as writer:
        gone = [r.id for r in writer.store.images_under(writer.collection.id, [str(a / "gone")])]
        assert len(gone) == 12
        index_folder([b], engine=writer)
        remove_paths([a / "gone"], engine=writer)
        removed_by = time.monotonic()
    return dict.fromkeys(gone, removed_by)


def _check_results(results: list[dict], removed: dict[int, float]) -> int:
    errors = reader_errors(results)
    assert not errors, errors[0]
    leaked = leaked_ids(results, removed)
    assert not leaked, f"searches returned removed ids: {leaked[:5]}"
    return len(results)


def _live(collection: str = COLL) -> set[int]:
    with SearchEngine.open(collection) as engine:
        return set(engine.store.live_ids(engine.collection.id).tolist())


def test_reader_threads_while_a_writer_adds_and_removes(collection):
    a, b = collection
    reader = SearchEngine.open(COLL)
    reader.refresh_every = 0.0  # check for a new generation before every search
    results: list[dict] = []
    stop = threading.Event()

    def searching(seed: int) -> None:
        n = seed
        while not stop.is_set():
            started = time.monotonic()
            try:
                hits = (reader.search(image=imagegen.photo_image(seed=n), k=8) if n % 3 == 0 else
                        reader.search("a photo of shapes", k=8, dedup=n % 3 == 1))  # dedup reads vectors
                results.append({"start": started, "ids": [h.id for h in hits]})
            except Exception:  # noqa: BLE001 - any reader error fails the test below
                results.append({"start": started, "ids": [], "error": traceback.format_exc()})
            n += 1

    threads = [threading.Thread(target=searching, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        removed = _write(a, b)
        time.sleep(0.3)  # searches after the write finished
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    with reader:
        searches = _check_results(results, removed)
        assert searches > 10
        # the new generation was picked up by the same engine object: b's images are searchable
        live = _live()
        assert set(reader.index.ids().tolist()) == live
        assert len(live) == 16 + 24
        newest = max(live)
        vec = reader.store.vectors_for(reader.collection.id, [newest])[0]
        assert reader.search(vector=vec, k=1)[0].id == newest


def test_reader_processes_while_a_writer_adds_and_removes(collection, tmp_path):
    a, b = collection
    stop = tmp_path / "stop"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    outs = [tmp_path / f"reader{i}.jsonl" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.support.concurrency_reader", COLL, str(out), str(stop)],
                              env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True) for out in outs]
    try:
        deadline = time.monotonic() + 120
        while not all(o.exists() and o.stat().st_size for o in outs) and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs]
            time.sleep(0.05)
        removed = _write(a, b)
        time.sleep(1.0)  # searches after the write finished
    finally:
        stop.touch()
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
    live = _live()
    for out in outs:
        lines, summary = read_results(out)
        assert _check_results(lines, removed) > 5
        assert any(r["start"] > max(removed.values()) for r in lines), "no search ran after the write"
        # without restarting, each reader ended on the writer's new generation
        assert set(summary["index_ids"]) == live and len(live) == 40


def test_a_second_writer_is_refused_with_the_holder_named(run, photos):
    run(photos)
    with SearchEngine.open(COLL, writable=True):
        with pytest.raises(WriterBusyError, match=rf"collection 'conc' is being written by another process "
                                                 rf"\(pid {os.getpid()} on .*wait for it to finish"):
            SearchEngine.open(COLL, writable=True)
        with pytest.raises(WriterBusyError):
            index_folder([photos], collection=COLL)
        with SearchEngine.open(COLL) as reader:  # readers take no lock
            assert len(reader.search("a photo", k=3)) == 3
    with SearchEngine.open(COLL, writable=True) as again:  # released on close
        assert again.index.ntotal == 6


_HOLDER = """
import sys, time
from searchengine import SearchEngine
engine = SearchEngine.open(sys.argv[1], writable=True)
print("holding", flush=True)
time.sleep(600)
"""


def test_cli_writer_refused_while_another_process_writes_then_free_after_sigkill(tiny_model, photos, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    index = [sys.executable, "-m", "searchengine", "index", str(photos), "--model", tiny_model, "-c", COLL]
    assert subprocess.run(index, env=env, capture_output=True, text=True, timeout=300).returncode == 0
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, COLL], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        busy = subprocess.run(index, env=env, capture_output=True, text=True, timeout=300)
        assert busy.returncode == 7, busy.stderr
        assert f"is being written by another process (pid {holder.pid} on" in busy.stderr
        assert "Traceback" not in busy.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    done = subprocess.run(index + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_rows_removed_between_a_readers_two_reads_are_skipped(run, photos, monkeypatch):
    """A writer can remove a row between a reader's read of the live ids and of their vectors (or
    between joining the hits and de-duplicating them): the reader skips it instead of failing."""
    run(photos)
    with SearchEngine.open(COLL) as reader:
        hits = reader.search("a photo", k=6)
        with SearchEngine.open(COLL, writable=True) as writer:
            remove_paths([hits[0].path], engine=writer)
        # de-duplicating hits joined before the removal
        cid = reader.collection.id
        assert [h.id for h in dedup(reader.store, cid, hits, 0.99)] == [h.id for h in dedup(reader.store, cid, hits[1:], 0.99)]
        with pytest.raises(NotFoundError):
            reader.similar(hits[0].id)
        # reconciling with a live-id list read before the removal
        real = reader.store.live_ids
        monkeypatch.setattr(reader.store, "live_ids", lambda cid, kind="images": np.union1d(real(cid, kind),
                                                                                             [hits[0].id]))
        assert reader.refresh(force=True)
        assert hits[0].id not in reader.index.ids() and reader.index.ntotal == 5
