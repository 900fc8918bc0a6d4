"""Ingestion benchmark: index a folder from scratch into a throwaway data directory.

    python tests/benchmarks/bench_index.py FOLDER... --model local-dir:data/cache/models/vit-b-32-random

Prints one JSON line: images, seconds, images/s end to end, and the settings used. Run on demand
(never part of the default test run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--model", required=True)
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from indexer import index_folder
    from searchengine import SearchEngine

    with tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        with SearchEngine.open("bench", data_dir=home, model=args.model, device=args.device, create=True,
                               settings=None) as engine:
            engine.settings = engine.settings.with_(workers=args.workers, batch_size=args.batch_size)
            loaded = time.perf_counter()
            report = index_folder(args.folders, engine=engine)
        total = time.perf_counter() - started
    print(json.dumps({
        "model": args.model, "images": report.encoded, "index_seconds": round(report.seconds, 2),
        "images_per_s": round(report.encoded / report.seconds, 2) if report.seconds else None,
        "model_load_seconds": round(loaded - started, 2), "wall_seconds": round(total, 2),
        "workers": engine.settings.decode_workers(), "batch_size": args.batch_size,
        "cpus": os.cpu_count(), "machine": platform.machine(), "failed": report.failed,
    }))


if __name__ == "__main__":
    main()
