"""Readers against one writer, for as long as you like (on demand; the default suite runs a short
version in tests/integration/test_concurrency.py).

    python tests/benchmarks/concurrency_stress.py --seconds 120 --threads 3 --processes 2

In a throwaway data directory, with a tiny random model: a base folder is indexed, then reader
threads (sharing one engine in this process) and reader processes search without pause while the
writer, in cycles, indexes a new folder and removes the folder it added two cycles before. It
prints searches run, reader errors, removed ids returned by searches that started after their
removal was committed (both must be 0), index generations the writer saved, and whether every
reader ended on the writer's last generation; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the writer keeps writing")
    parser.add_argument("--threads", type=int, default=3, help="reader threads in this process")
    parser.add_argument("--processes", type=int, default=2, help="reader processes")
    parser.add_argument("--images", type=int, default=20, help="images per folder the writer adds")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="se-stress-") as tmp:
        work = Path(tmp)
        os.environ.update(SEARCHENGINE_HOME=str(work / "home"), SEARCHENGINE_WORKERS="0", HF_HUB_OFFLINE="1")
        result = _run(work, args)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    ok = (result["reader_errors"] == 0 and result["leaked_ids"] == 0 and result["readers_on_last_generation"]
          and result["searches"] > 0)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def _run(work: Path, args) -> dict:
    from indexer import index_folder, remove_paths
    from searchengine import SearchEngine
    from tests.support import imagegen
    from tests.support.concurrency_reader import leaked_ids, read_results, reader_errors
    from tests.support.tinymodel import make_tiny_model

    model = make_tiny_model(work / "model")
    seeds = iter(range(10**6))

    def folder(name: str, n: int) -> Path:
        path = work / name
        path.mkdir()
        for i in range(n):
            imagegen.photo(path / f"p{i:03d}.jpg", seed=next(seeds))
        return path

    coll = "stress"
    index_folder([folder("base", 50)], collection=coll, model=model)
    reader = SearchEngine.open(coll)
    reader.refresh_every = 0.0
    results: list[dict] = []
    stop = threading.Event()

    def searching(n: int) -> None:
        from tests.support.imagegen import photo_image

        while not stop.is_set():
            started = time.monotonic()
            try:
                hits = (reader.search(image=photo_image(seed=n), k=10) if n % 3 == 0 else
                        reader.search("a photo", k=10, dedup=n % 3 == 1))  # dedup reads the hits' vectors
                results.append({"start": started, "ids": [h.id for h in hits]})
            except Exception:  # noqa: BLE001 - counted as a reader error
                results.append({"start": started, "ids": [], "error": traceback.format_exc()})
            n += 1

    stop_file = work / "stop"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    outs = [work / f"reader{i}.jsonl" for i in range(args.processes)]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.support.concurrency_reader", coll, str(out), str(stop_file)],
                              env=env, cwd=ROOT) for out in outs]
    threads = [threading.Thread(target=searching, args=(i,)) for i in range(args.threads)]
    for t in threads:
        t.start()
    _wait_for(lambda: all(o.exists() and o.stat().st_size for o in outs), procs)  # every reader searching
    removed: dict[int, float] = {}
    added: list[Path] = []
    cycles = 0
    deadline = time.monotonic() + args.seconds
    with SearchEngine.open(coll, writable=True) as writer:
        while time.monotonic() < deadline:
            added.append(folder(f"add{cycles}", args.images))
            index_folder([added[-1]], engine=writer)
            if len(added) > 2:
                old = added.pop(0)
                ids = [r.id for r in writer.store.images_under(writer.collection.id, [str(old)])]
                remove_paths([old], engine=writer)
                removed.update(dict.fromkeys(ids, time.monotonic()))
            cycles += 1
        live = set(writer.store.live_ids(writer.collection.id).tolist())
        generations = writer.collection.index_seq
    last_write = time.monotonic()
    # every reader has started a search after the last write (and so checked for its generation)
    _wait_for(lambda: any(r["start"] > last_write for r in results[-args.threads * 4:])
              and all(_last_start(o) > last_write for o in outs), procs)
    stop.set()
    stop_file.touch()
    for t in threads:
        t.join()
    on_last = [set(reader.index.ids().tolist()) == live]
    reader.close()
    for proc in procs:
        proc.wait()
    process_results = []
    for out in outs:
        lines, summary = read_results(out)
        process_results += lines
        on_last.append(set(summary.get("index_ids", ())) == live)
    everything = results + process_results
    return {
        "seconds": args.seconds, "reader_threads": args.threads, "reader_processes": args.processes,
        "writer_cycles": cycles, "images_added": cycles * args.images, "images_removed": len(removed),
        "last_index_seq": generations, "searches": len(everything), "searches_in_threads": len(results),
        "reader_errors": len(reader_errors(everything)), "leaked_ids": len(leaked_ids(everything, removed)),
        "readers_on_last_generation": all(on_last), "on_last_generation_by_reader": on_last,
        "first_error": (reader_errors(everything) or [None])[0],
    }


def _last_start(path: Path) -> float:
    lines = path.read_text(encoding="utf-8").splitlines()
    return json.loads(lines[-2])["start"] if len(lines) > 1 else 0.0  # the last line may be half-written


def _wait_for(condition, procs, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit("a reader process died or stalled")
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
