"""Image->text retrieval through the engine: captions imported as a catalog, searched by image.

    python tests/benchmarks/bench_image_to_text.py data/cache/tuxpaint/test.jsonl --model lite

Each record of the split becomes a product whose caption is its first (English) caption; every
image then queries the text index (``SearchEngine.search_texts``). A returned caption is correct
when it is the query image's own caption text or belongs to a byte-identical copy of the image.
Prints one JSON line with recall@1/5/10. Run on demand (never part of the default test run).
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
    parser.add_argument("split", type=Path)
    parser.add_argument("--model", default="lite")
    args = parser.parse_args()

    from indexer import import_catalog
    from searchengine import SearchEngine
    from searchengine.store import content_hash

    base = args.split.parent
    records = [json.loads(line) for line in args.split.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Path(tmp) / "catalog.jsonl"
        with catalog.open("w") as fh:
            for i, rec in enumerate(records):
                fh.write(json.dumps({"id": f"r{i}", "image": str((base / rec["image"]).resolve()),
                                     "caption": rec["captions"][0]}) + "\n")
        os.environ["SEARCHENGINE_HOME"] = tmp
        started = time.perf_counter()
        import_catalog(catalog, collection="i2t", model=args.model)
        imported = time.perf_counter() - started
        digest = {f"r{i}": content_hash((base / r["image"]).read_bytes()) for i, r in enumerate(records)}
        hits = {1: 0, 5: 0, 10: 0}
        started = time.perf_counter()
        with SearchEngine.open("i2t") as engine:
            for i, rec in enumerate(records):
                found = engine.search_texts(image=str(base / rec["image"]), k=10)
                ok = [t.text == rec["captions"][0].strip() or digest.get(t.product_id) == digest[f"r{i}"] for t in found]
                for k in hits:
                    hits[k] += any(ok[:k])
        queried = time.perf_counter() - started
    n = len(records)
    print(json.dumps({"split": str(args.split), "model": args.model, "images": n,
                      **{f"i2t_R@{k}": round(v / n, 3) for k, v in hits.items()},
                      "import_s": round(imported, 1), "query_ms": round(1000 * queried / n, 1)}))


if __name__ == "__main__":
    main()
