"""A reader process for the concurrency tests: search a collection until told to stop.

    python -m tests.support.concurrency_reader COLLECTION OUT.jsonl STOPFILE

Opens the collection read-only once and searches it in a loop (text queries, and the stored
vectors of the images it finds), checking for new index generations before every search. Each
search is written to OUT as one JSON line: monotonic start and end times (CLOCK_MONOTONIC is
system-wide on Linux, so they compare with the writer's), the ids returned, or the error. The
last line is a summary: the ids the reader's index held when it stopped (as its last search
left it: nothing is reloaded after the loop).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from searchengine import SearchEngine

QUERIES = ("a red square", "blue sky over a field", "green circle", "a photo", "stripes")


def reader_errors(results: list[dict]) -> list[str]:
    """The tracebacks of the searches that failed."""
    return [r["error"] for r in results if "error" in r]


def leaked_ids(results: list[dict], removed: dict[int, float]) -> list[tuple[float, int]]:
    """(search start, id) for each id a search returned although its removal was committed (at
    ``removed[id]``, monotonic seconds) before that search started."""
    return [(r["start"], i) for r in results for i in r.get("ids", ()) if i in removed and r["start"] > removed[i]]


def read_results(path: Path) -> tuple[list[dict], dict]:
    """(the searches, the summary line) a reader process wrote."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    summary = lines.pop() if lines and lines[-1].get("summary") else {}
    return lines, summary


def main(collection: str, out: str, stop: str) -> int:
    stop_file = Path(stop)
    with SearchEngine.open(collection) as engine, open(out, "w", encoding="utf-8") as fh:
        engine.refresh_every = 0.0
        n, last = 0, None
        while not stop_file.exists():
            started = time.monotonic()
            try:
                # image->image with the vector of an image found before (if it is still stored)
                _, vecs = engine.store.live_vectors(engine.collection.id, [last] if last is not None and n % 2 else [])
                if len(vecs):
                    hits = engine.search(vector=vecs[0], k=8)
                else:
                    hits = engine.search(QUERIES[n % len(QUERIES)], k=8)
                ids = [h.id for h in hits]
                last = ids[-1] if ids else last
                record = {"start": started, "end": time.monotonic(), "ids": ids}
            except Exception:  # noqa: BLE001 - a reader error is what the test looks for
                record = {"start": started, "end": time.monotonic(), "error": traceback.format_exc()}
            fh.write(json.dumps(record) + "\n")
            n += 1
        fh.write(json.dumps({"summary": True, "index_ids": sorted(int(i) for i in engine.index.ids()),
                             "searches": n}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
