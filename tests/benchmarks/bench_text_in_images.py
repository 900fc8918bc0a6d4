"""Hybrid vs vector-only search on queries that quote text visible in images.

    python data/make_text_images.py            # builds data/cache/textimages (photos with signs)
    python tests/benchmarks/bench_text_in_images.py data/cache/textimages --model lite

Indexes the images with OCR into a throwaway collection, then asks each phrase in
queries.jsonl in vector, keyword and hybrid mode; a query is answered when its image is in the
top k. Prints one JSON line with recall@1/5 per mode and the OCR indexing speed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default="lite")
    parser.add_argument("--keyword-weight", type=float, default=0.5)
    args = parser.parse_args()

    from indexer import index_folder
    from searchengine import SearchEngine

    queries = [json.loads(line) for line in (args.folder / "queries.jsonl").read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SEARCHENGINE_HOME"] = tmp
        started = time.perf_counter()
        report = index_folder(args.folder / "images", collection="text-in-images", model=args.model, ocr=True)
        seconds = time.perf_counter() - started
        out: dict[str, object] = {"images": report.added, "queries": len(queries), "model": args.model,
                                  "index_with_ocr_s": round(seconds, 1)}
        with SearchEngine.open("text-in-images") as engine:
            for mode in ("vector", "keyword", "hybrid"):
                ranks = []
                for q in queries:
                    hits = engine.search(text=q["query"], k=5, mode=mode, keyword_weight=args.keyword_weight)
                    target = str((args.folder / q["path"]).resolve())
                    paths = [h.path for h in hits]
                    ranks.append(paths.index(target) + 1 if target in paths else None)
                for k in (1, 5):
                    out[f"{mode}_R@{k}"] = round(sum(r is not None and r <= k for r in ranks) / len(ranks), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
